"""The credentials an agent's models imply: each provider's API key is ``PROVIDER_key``.

As in Action Llama, an agent need not list the key of its models' provider in
``credentials``: ``models = ["sonnet"]`` with ``[models.sonnet] provider = "anthropic"``
needs ``anthropic_key`` (its ``default`` instance), unless the model uses
``authType = "pi_auth"`` (the coding agent's own login) or the agent names a key of that
provider itself (``anthropic_key:work``, or ``env:ANTHROPIC_API_KEY``), which is then used.

This is the one place that maps a provider to its credential and variable; project
checks, ``corral doctor``, run preparation and the LLM clients all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from corral.credentials.errors import CredentialError
from corral.credentials.types import CredentialRef, credential_type, parse_ref

__all__ = [
    "KEYLESS_AUTH",
    "MODEL_KEY_VARIABLES",
    "implied_credentials",
    "model_key_type",
    "model_key_variable",
]

#: The providers corral knows (as ``[models.NAME] provider`` spells them).
_PROVIDERS = ("anthropic", "openai", "groq", "google", "xai", "mistral", "openrouter", "custom")

#: ``authType`` values that need no key credential (the CLI's own stored login).
KEYLESS_AUTH = frozenset({"pi_auth"})


def model_key_type(provider: str) -> str:
    """``anthropic`` -> ``anthropic_key``: the credential type holding the provider's key."""
    return f"{provider}_key"


def model_key_variable(provider: str) -> str:
    """The environment variable the provider's key is set as (``ANTHROPIC_API_KEY``):
    what coding-agent CLIs read, and what a built-in harness run keeps in the scheduler."""
    return credential_type(model_key_type(provider)).env[0].name


#: provider -> the variable holding its API key.
MODEL_KEY_VARIABLES: Mapping[str, str] = {p: model_key_variable(p) for p in _PROVIDERS}


def _named_refs(explicit: Sequence[str]) -> list[CredentialRef]:
    refs = []
    for name in explicit:
        try:
            refs.append(parse_ref(name))
        except CredentialError:
            continue  # reported where the agent's credentials are checked
    return refs


def implied_credentials(
    models: Iterable[tuple[str, str]], explicit: Sequence[str] = ()
) -> list[CredentialRef]:
    """The key credentials ``models`` (``(provider, authType)`` pairs, in order) imply and
    ``explicit`` (the agent's own ``credentials``) does not already provide, without
    duplicates.

    A provider is provided for when the agent names a credential of its key type (any
    instance) or an ``env:VAR`` setting its key variable.
    """
    named = _named_refs(explicit)
    types = {ref.type for ref in named}
    variables = {ref.instance for ref in named if ref.type == "env"}
    implied: list[CredentialRef] = []
    for provider, auth_type in models:
        if auth_type in KEYLESS_AUTH or provider not in MODEL_KEY_VARIABLES:
            continue
        key_type = model_key_type(provider)
        if key_type in types or MODEL_KEY_VARIABLES[provider] in variables:
            continue
        ref = CredentialRef(key_type)
        if ref not in implied:
            implied.append(ref)
    return implied
