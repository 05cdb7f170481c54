"""The store's shape: every public method of ``Store`` belongs to exactly one concern
protocol (``corral.store.protocols``), and both real stores satisfy every protocol with
the very signatures the protocol states. A new store method fails here until it is
placed in a concern."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast, get_args, get_origin

import pytest

from corral.store import Store
from corral.store.protocols import CONCERNS

#: Public callables a backend adds to ``Store`` for its own use (not part of the interface).
BACKEND_ONLY = {"sqlite": {"call"}, "postgresql": set[str]()}


def _members(cls: type) -> set[str]:
    """The public methods and properties a protocol or class defines (its own or inherited
    from corral code; never object's or Protocol's)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("corral."):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if callable(value) or isinstance(value, property):
                names.add(name)
    return names


#: The special methods a protocol may state (``async with store``).
_SPECIAL = ("__aenter__", "__aexit__")


def _protocol_members(protocol: type, *, special: bool = False) -> set[str]:
    """The protocol's public methods and properties (and, with ``special``, the special
    methods it states too)."""
    public = {name for name in vars(protocol) if not name.startswith("_")} & _members(protocol)
    return public | ({n for n in _SPECIAL if n in vars(protocol)} if special else set())


def _signature(cls: type, name: str) -> inspect.Signature:
    member = inspect.getattr_static(cls, name)
    function = cast(Callable[..., Any], member.fget if isinstance(member, property) else member)
    signature = inspect.signature(function, eval_str=True)
    returns = signature.return_annotation
    if hasattr(function, "__wrapped__") and get_origin(returns) in (AsyncIterator, AsyncGenerator):
        # an @asynccontextmanager generator: what callers get is the context manager
        returns = AbstractAsyncContextManager[get_args(returns)[0]]  # type: ignore[misc]
    return signature.replace(return_annotation=returns)


def _comparable(signature: inspect.Signature, stated: inspect.Signature) -> tuple[Any, ...]:
    """Names, kinds, defaults and annotations; where the protocol states ``Any`` (a
    value's encoding, which each backend narrows) any annotation matches."""
    params = []
    for param, said in zip(
        signature.parameters.values(), [*stated.parameters.values()] + [None] * 99, strict=False
    ):
        loose = said is not None and said.annotation is Any
        annotation = Any if loose else param.annotation
        params.append((param.name, param.kind, param.default, repr(annotation)))
    returns = Any if stated.return_annotation is Any else signature.return_annotation
    # repr: type variables of two modules (each module's own ``_T``) compare by name
    return tuple(params), repr(returns)


def test_every_public_store_method_is_in_exactly_one_protocol() -> None:
    owners: dict[str, list[str]] = {}
    for protocol in CONCERNS:
        for name in _protocol_members(protocol):
            owners.setdefault(name, []).append(protocol.__name__)
    twice = {name: found for name, found in owners.items() if len(found) > 1}
    assert twice == {}, f"in more than one protocol: {twice}"
    unplaced = _members(Store) - set(owners)
    assert unplaced == set(), (
        f"public Store methods in no protocol of corral.store.protocols: {sorted(unplaced)}; "
        "add each to the concern it belongs to"
    )
    stale = set(owners) - _members(Store)
    assert stale == set(), f"protocol members Store does not have: {sorted(stale)}"


def test_each_protocol_says_what_it_covers() -> None:
    """Each protocol has a docstring naming its concern (the docs list them)."""
    for protocol in CONCERNS:
        assert (protocol.__doc__ or "").strip(), protocol.__name__


async def test_the_real_store_satisfies_every_protocol(store: Store) -> None:
    cls = type(store)
    for protocol in CONCERNS:
        assert isinstance(store, protocol), protocol.__name__
        for name in _protocol_members(protocol, special=True):
            said = _signature(protocol, name)
            stated = _comparable(said, said)
            actual = _comparable(_signature(cls, name), said)
            assert actual == stated, f"{cls.__name__}.{name} differs from {protocol.__name__}"
    extra = _members(cls) - _members(Store)
    assert extra == BACKEND_ONLY[store.dialect], (
        f"{cls.__name__} adds public methods {sorted(extra)}: make them private, or put "
        "them in Store and in a protocol"
    )


@pytest.mark.parametrize("protocol", CONCERNS, ids=lambda p: p.__name__)
def test_a_store_missing_a_method_does_not_satisfy_its_protocol(protocol: type) -> None:
    """The runtime check is real: an object with every method of a protocol but one is not
    an instance of it."""
    names = sorted(_protocol_members(protocol, special=True))
    partial = type("Partial", (), {name: lambda self: None for name in names[1:]})()
    assert not isinstance(partial, protocol)
    whole = type("Whole", (), {name: lambda self: None for name in names})()
    assert isinstance(whole, protocol)
