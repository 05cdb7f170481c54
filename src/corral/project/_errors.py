"""Turning pydantic's validation errors into messages a person can act on.

pydantic's ``loc`` names the field; the expected type is read back from the
model's annotations so every message says what was expected and what was found.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from corral.errors import ConfigIssue
from corral.project._checks import PROBLEM, describe_value
from corral.project._toml import Loc, Locator

__all__ = ["did_you_mean", "format_field", "translate", "unknown_key_message"]

Attribute = Callable[[Loc], tuple[str, Locator]]
"""Which file (shown name and locator) supplied the value at a location."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def format_field(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def unknown_key_message(key: str, where: str, candidates: Iterable[str]) -> str:
    names = sorted(set(candidates))
    guess = did_you_mean(key, names)
    if guess:
        return f"unknown key '{key}' in {where}: did you mean '{guess}'?"
    return f"unknown key '{key}' in {where}; valid keys are: {', '.join(names)}"


def translate(
    exc: ValidationError,
    model: type[BaseModel],
    attribute: Attribute,
    extra_keys: Mapping[str, Sequence[str]] | None = None,
) -> list[ConfigIssue]:
    """One :class:`ConfigIssue` per error; ``extra_keys`` adds valid top-level keys per file."""
    issues = []
    for error in exc.errors(include_url=False):
        loc = _without_tags(model, tuple(error["loc"]))
        shown, locator = attribute(loc)
        extra = (extra_keys or {}).get(shown, ()) if len(loc) == 1 else ()
        message = _message(error, model, loc, shown, extra)
        issues.append(ConfigIssue(shown, format_field(loc), message, locator.line_for(loc)))
    return issues


def _message(
    error: ErrorDetails, model: type[BaseModel], loc: Loc, shown: str, extra: Sequence[str]
) -> str:
    field = format_field(loc)
    kind = error["type"]
    found = _field_at(model, loc)
    expected = _describe(*found) if found else None
    if kind in ("extra_forbidden", "missing"):
        return _key_message(kind, model, loc, shown, extra, expected)
    if kind == PROBLEM:
        return f"'{field}' {error['msg']}"
    if expected is None:
        return f"'{field}' is not valid: {error['msg']}"
    value = error["input"]
    message = f"'{field}' must be {expected}, got {describe_value(value)}"
    if kind == "literal_error" and isinstance(value, str) and found:
        guess = did_you_mean(value, _literal_values(found[0]))
        message += f': did you mean "{guess}"?' if guess else ""
    elif expected.startswith("a list of strings") and isinstance(value, str):
        message += f' (write ["{value}"])'
    return message


def _key_message(
    kind: str,
    model: type[BaseModel],
    loc: Loc,
    shown: str,
    extra: Sequence[str],
    expected: str | None,
) -> str:
    parent, key = loc[:-1], str(loc[-1])
    where = shown
    if parent:
        table = format_field(parent)
        where = f"{table if isinstance(parent[-1], int) else f'[{table}]'} of {shown}"
    if kind == "missing":
        return f"missing required key '{key}' in {where}" + (
            f": it must be {expected}" if expected else ""
        )
    if parent and key in _keys_at(model, ()):
        return (
            f"'{key}' is read as part of [{format_field(parent)}] in {shown}: top-level keys "
            "must come before the first [table] header; move it up"
        )
    home = _table_holding(model, parent, key)
    if home:
        return f"unknown key '{key}' in {where}: it belongs in [{home}]; move it under that header"
    return unknown_key_message(key, where, [*_keys_at(model, parent), *extra])


def _table_holding(model: type[BaseModel], parent: Loc, key: str) -> str | None:
    """A sub-table of ``parent`` that has ``key`` (``command`` -> ``harness``), if exactly one."""
    if did_you_mean(key, _keys_at(model, parent)):
        return None
    homes = [name for name in _keys_at(model, parent) if key in _keys_at(model, (*parent, name))]
    return format_field((*parent, homes[0])) if len(homes) == 1 else None


# --- reading the expected type back from the model ----------------------------


def _tags(annotation: Any) -> dict[str, Any]:
    """The members of a tagged union (``scale = N`` or ``[scale]``) by tag."""
    annotation, _ = _unwrap(annotation)
    if get_origin(annotation) not in (Union, types.UnionType):
        return {}
    found = {}
    for member in get_args(annotation):
        if get_origin(member) is Annotated:
            for meta in member.__metadata__:
                if isinstance(meta, Tag) and isinstance(meta.tag, str):
                    found[meta.tag] = member
    return found


def _without_tags(model: type[BaseModel], loc: Loc) -> Loc:
    """pydantic puts a tagged union's tag in ``loc`` (``scale.pool.min``): a config's
    reader never wrote it, so it is dropped (``scale.min``)."""
    kept: list[str | int] = []
    for part in loc:
        found = _field_at(model, tuple(kept))
        if found is not None and isinstance(part, str) and part in _tags(found[0]):
            continue
        kept.append(part)
    return tuple(kept)


def _member_with(annotation: Any, part: str) -> Any:
    """The model member of a union that has the key ``part``, if any."""
    for member in get_args(annotation):
        inner, _ = _unwrap(member)
        if _is_model(inner) and any((f.alias or n) == part for n, f in inner.model_fields.items()):
            return inner
    return None


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` and ``X | None``, collecting constraint metadata."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            metadata += list(annotation.__metadata__)
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_at(model: type[BaseModel], loc: Loc) -> tuple[Any, list[Any]] | None:
    annotation: Any = model
    metadata: list[Any] = []
    for part in loc:
        annotation, _ = _unwrap(annotation)
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType) and isinstance(part, str):
            annotation = _member_with(annotation, part) or annotation
            origin = get_origin(annotation)
        if _is_model(annotation) and isinstance(part, str):
            fields = annotation.model_fields
            name = next((n for n, f in fields.items() if (f.alias or n) == part), None)
            if name is None:
                return None
            annotation, metadata = fields[name].annotation, list(fields[name].metadata)
        elif origin is Mapping and isinstance(part, str):
            annotation, metadata = get_args(annotation)[1], []
        elif origin is tuple and isinstance(part, int):
            annotation, metadata = get_args(annotation)[0], []
        else:
            return None
    return annotation, metadata


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    found = _field_at(model, loc) if loc else (model, [])
    if found is None:
        return []
    annotation, _ = _unwrap(found[0])
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    models = [m for m in (_unwrap(m)[0] for m in members) if _is_model(m)] or [annotation]
    return [f.alias or n for m in models if _is_model(m) for n, f in m.model_fields.items()]


def _literal_values(annotation: Any) -> list[str]:
    annotation, _ = _unwrap(annotation)
    return [str(a) for a in get_args(annotation)] if get_origin(annotation) is Literal else []


def _describe(annotation: Any, metadata: list[Any]) -> str | None:
    annotation, more = _unwrap(annotation)
    metadata = metadata + more
    origin = get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        noun = "an integer" if annotation is int else "a number"
        return noun + _bounds(metadata)
    if annotation is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in get_args(annotation))
    if origin is tuple:
        item, _ = _unwrap(get_args(annotation)[0])
        return "a list of " + {str: "strings", int: "integers"}.get(item, "tables")
    if origin is Mapping or _is_model(annotation):
        return "a table"
    return None


def _bounds(metadata: list[Any]) -> str:
    bound = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
    if "ge" in bound and "le" in bound:
        return f" between {bound['ge']} and {bound['le']}"
    if "ge" in bound:
        return f" >= {bound['ge']}"
    if "gt" in bound:
        return f" > {bound['gt']}"
    return ""
