"""What can go wrong talking to a model provider.

    ProviderError (a CorralError)
    ├── RateLimited   HTTP 429; ``retry_after`` seconds when the provider said
    ├── Overloaded    HTTP 529 or 503, or an error whose type/message says "overloaded"
    ├── AuthFailed    HTTP 401 / 403: the key is wrong, expired or lacks access
    ├── BadRequest    HTTP 400 / 404 / 422 and other 4xx: retrying the same request won't help
    └── Unavailable   connection errors, timeouts, other 5xx, a stream cut short
        └── BadResponse   the provider answered something that could not be understood

Every message names the provider, the model and the URL, then the HTTP status (if any) and
the provider's own error message. ``RateLimited``, ``Overloaded`` and ``Unavailable`` are
worth retrying (or falling back to another model); ``AuthFailed`` and ``BadRequest`` are not.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, Unpack

import httpx

from corral.errors import CorralError

__all__ = [
    "AuthFailed",
    "BadRequest",
    "BadResponse",
    "Overloaded",
    "ProviderError",
    "RateLimited",
    "Unavailable",
    "WhereKw",
    "error_for_event",
    "error_for_status",
]


class WhereKw(TypedDict):
    """Which provider, model and URL an error concerns."""

    provider: str
    model: str
    url: str


class ProviderError(CorralError):
    """A model provider refused or failed a request."""

    def __init__(
        self,
        detail: str,
        *,
        provider: str,
        model: str = "",
        url: str = "",
        status: int | None = None,
        provider_message: str | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.url = url
        self.status = status
        self.provider_message = provider_message
        where = provider
        if model:
            where += f" model {model!r}"
        if url:
            where += f" at {url}"
        super().__init__(f"{where}: {detail}")


class RateLimited(ProviderError):
    """HTTP 429: too many requests or tokens; wait ``retry_after`` seconds if given."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(detail, **kw)


class Overloaded(ProviderError):
    """The provider is overloaded (529 / 503); retry later or fall back."""


class AuthFailed(ProviderError):
    """HTTP 401 / 403: the credential was refused."""


class BadRequest(ProviderError):
    """The request itself is wrong (unknown model, bad parameters, too long)."""


class Unavailable(ProviderError):
    """The provider could not be reached or the answer was cut short."""


class BadResponse(Unavailable):
    """The provider's answer could not be understood (malformed stream or tool input)."""


_AUTH = {401, 403}
_BAD = {400, 404, 413, 422}


def provider_message(body: str) -> tuple[str, str]:
    """The ``(error type, message)`` in an error body of either API shape, or ``("", body)``."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", body.strip()[:500]
    if not isinstance(data, dict):
        return "", body.strip()[:500]
    err = data.get("error", data.get("detail", data))
    if isinstance(err, str):
        return "", err
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code") or ""
        message = err.get("message") or json.dumps(err)
        return str(kind), str(message)
    return "", body.strip()[:500]


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_for_status(status: int, body: str, headers: httpx.Headers, **where: str) -> ProviderError:
    """The error for a non-200 response; ``where`` holds provider, model and url."""
    kind, message = provider_message(body)
    detail = f"HTTP {status}: {message or '(empty body)'}"
    kw: dict[str, Any] = {**where, "status": status, "provider_message": message}
    if status in _AUTH:
        return AuthFailed(f"{detail} (check the API key and its access)", **kw)
    if status == 429:
        wait = retry_after(headers)
        return RateLimited(detail, retry_after=wait, **kw)
    if status in (503, 529) or "overloaded" in f"{kind} {message}".lower():
        return Overloaded(detail, **kw)
    if status in _BAD or (400 <= status < 500 and status not in (408, 409)):
        return BadRequest(detail, **kw)
    return Unavailable(detail, **kw)


_EVENT_ERRORS: dict[str, type[ProviderError]] = {
    "overloaded_error": Overloaded,
    "rate_limit_error": RateLimited,
    "authentication_error": AuthFailed,
    "permission_error": AuthFailed,
    "invalid_request_error": BadRequest,
    "not_found_error": BadRequest,
    "request_too_large": BadRequest,
}


def error_for_event(kind: str, message: str, **where: Unpack[WhereKw]) -> ProviderError:
    """The error for an error reported inside a 200 stream (by its error type)."""
    cls = _EVENT_ERRORS.get(kind, Unavailable)
    if cls is Unavailable and "overloaded" in f"{kind} {message}".lower():
        cls = Overloaded
    detail = f"error in stream ({kind or 'unknown'}): {message}"
    return cls(detail, provider_message=message, **where)
