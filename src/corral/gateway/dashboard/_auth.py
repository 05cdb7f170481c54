"""Who may see the dashboard, and which requests may change anything.

Session: the login form takes an operator token; when it is valid, the token itself is
put in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard`` (Secure over
HTTPS). Every request but the static files presents it again and it is checked again,
by ``Gate.identify``, the one function that knows what a valid token is. So nothing is
issued that outlives the token: revoking it ends every dashboard session at the next
request, and a live event stream re-checks it every ``RECHECK_SECONDS``.

Changes are POSTs, and each must pass three checks (docs/decisions.md, the
dashboard's entry): the browser did not mark it cross-site (``Sec-Fetch-Site``), its
``Origin``, when sent, is this host, and it carries the session's CSRF token in the
``X-CSRF-Token`` header (htmx sends it from the page's ``hx-headers``). The CSRF token is
an HMAC of the session's token, so it needs no server-side state and only a holder of
the token can compute it. SameSite=Strict already keeps the cookie off cross-site
requests; these checks hold even where it would not (a sibling subdomain, an old
browser).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from corral.engine.token import TokenVerifier

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "RECHECK_SECONDS",
    "Gate",
    "Operator",
    "csrf_ok",
    "csrf_token",
    "safe_next",
    "same_origin",
]

COOKIE = "corral_dashboard"
CSRF_HEADER = "x-csrf-token"
#: How often a long-lived event stream checks that its token is still valid.
RECHECK_SECONDS = 30.0


@dataclass(frozen=True)
class Operator:
    """The person behind a request: the name of their token, and their CSRF token."""

    name: str
    csrf: str

    @property
    def actor(self) -> str:
        """What the audit log records for their actions."""
        return f"dashboard:{self.name}"


class Gate:
    """Checks presented tokens; ``identify`` is the only place that knows how.

    ``verifier`` gives the gateway's ``TokenVerifier`` (``app.state.tokens``, set by the
    control API), the same one the control API and /metrics use: tokens in the store by
    their hash, plus ``$CORRAL_OPERATOR_TOKEN`` and the local token where accepted.
    """

    def __init__(self, verifier: Callable[[], TokenVerifier]) -> None:
        self._verifier = verifier

    async def identify(self, presented: str | None) -> str | None:
        """The name of the operator token ``presented`` is, or None when it is none."""
        if not presented:
            return None
        return await self._verifier().verify(presented)

    async def operator(self, request: Request) -> Operator | None:
        """The operator whose session cookie ``request`` carries, if it is valid."""
        presented = request.cookies.get(COOKIE)
        name = await self.identify(presented)
        if name is None or presented is None:
            return None
        return Operator(name, csrf_token(presented))


def csrf_token(token: str) -> str:
    """The CSRF token of a session: derived from its operator token, stateless."""
    return hmac.new(token.encode(), b"corral dashboard csrf v1", hashlib.sha256).hexdigest()[:40]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by every browser on same-origin requests
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()


def csrf_ok(request: Request, operator: Operator) -> bool:
    """The request is same-origin and carries the session's CSRF token."""
    given = request.headers.get(CSRF_HEADER, "")
    return same_origin(request) and hmac.compare_digest(given.encode(), operator.csrf.encode())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path, never another site."""
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        if "\\" not in target and "\n" not in target and "\r" not in target:
            return target
    return "/dashboard"
