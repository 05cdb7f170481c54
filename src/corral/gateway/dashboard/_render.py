"""Rendering: the Jinja2 environment (autoescape on everywhere), its filters, and the
headers every dashboard response carries.

Everything the dashboard shows that a run or a webhook sender wrote (status text, log
lines, return values, bodies, headers) is untrusted: it only ever reaches a page through
an autoescaping template or ``markupsafe.escape``, and the Content-Security-Policy
refuses inline scripts besides, so a ``<script>`` in a log is text twice over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.responses import HTMLResponse

from corral.inert import inert
from corral.transcript import fmt_cost

__all__ = ["STATIC_DIR", "Renderer", "security_headers"]

STATIC_DIR = Path(__file__).parent / "static"

#: No inline script or style, no framing, requests only to this origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: htmx settings: no eval, no inline indicator styles, no page copies kept in
#: localStorage, and error answers (4xx/5xx) swapped in too: they carry the message.
HTMX_CONFIG = json.dumps(
    {
        "allowEval": False,
        "allowScriptTags": False,
        "includeIndicatorStyles": False,
        "historyCacheSize": 0,
        "responseHandling": [
            {"code": "204", "swap": False},
            {"code": "[23]..", "swap": True},
            {"code": "[45]..", "swap": True, "error": True},
        ],
    },
    separators=(",", ":"),
)


def security_headers(*, cache: bool = False) -> dict[str, str]:
    """Headers for every dashboard answer; pages and fragments are never cached."""
    headers = {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
    }
    if not cache:
        headers["Cache-Control"] = "no-store"
    return headers


class Renderer:
    """The dashboard's templates, rendered to strings or to responses."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("corral.gateway.dashboard", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.versions = _static_versions()
        self.env.globals["static"] = self.static_url
        self.env.globals["htmx_config"] = HTMX_CONFIG
        self.env.filters.update(
            age=age,
            when=when,
            iso=iso,
            cost=cost,
            tokens=tokens,
            seconds=seconds,
            preview=preview,
            inert=inert_text,
            short_bundle=short_bundle,
            evidence=evidence,
        )

    def static_url(self, name: str) -> str:
        """``/dashboard/static/NAME`` with its content hash, so a new release is fetched."""
        return f"/dashboard/static/{name}?v={self.versions.get(name, '0')}"

    def render(self, template: str, context: Mapping[str, Any]) -> Markup:
        """The template's HTML: marked safe, as autoescape already escaped what it holds
        (so a fragment can be put into a page without being escaped twice)."""
        return Markup(self.env.get_template(template).render(**context))

    def page(self, template: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
        values = {"now": datetime.now(UTC), **context}
        return HTMLResponse(
            self.render(template, values), status_code=status, headers=security_headers()
        )


def _static_versions() -> dict[str, str]:
    versions = {}
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            name = path.relative_to(STATIC_DIR).as_posix()
            versions[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return versions


# -- filters --------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    """A duration for people: ``45s``, ``3m 04s``, ``2h 05m``, ``3d 2h``."""
    if value is None:
        return "—"
    total = max(int(value), 0)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def age(value: datetime | str | None, now: datetime | None = None) -> str:
    """How long ago ``value`` was."""
    moment = _time(value)
    if moment is None:
        return "—"
    return seconds(((now or datetime.now(UTC)) - moment).total_seconds())


def when(value: datetime | str | None) -> str:
    """A UTC time, short: ``2025-01-31 14:03:09``."""
    moment = _time(value)
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | str | None) -> str:
    moment = _time(value)
    return "" if moment is None else moment.isoformat()


def cost(value: float | None) -> str:
    """Dollars as `corral stat` shows them (cents; four places below a cent)."""
    return "—" if value is None else fmt_cost(value)


def tokens(value: int | None) -> str:
    if value is None:
        return "—"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1_000:.0f}k"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    return str(value)


def preview(value: object, limit: int = 120) -> str:
    """The first ``limit`` characters of a text, on one line."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_bundle(value: str | None) -> str:
    """A bundle's name, short: ``sha256:`` and its first 12 hex digits."""
    if not value:
        return "no bundle"
    algo, _, digest = value.partition(":")
    return f"{algo}:{digest[:12]}" if digest else value[:19]


def evidence(value: object) -> str:
    """One value of an anomaly's evidence as text: lists and objects as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def inert_text(value: object, lines: bool = False) -> str:
    """Text from outside with its control and format characters (ANSI escapes, bidi
    overrides, zero-width characters) shown as visible escapes (``\\x1b``), as the CLI
    shows them; ``lines`` keeps newlines and tabs. Autoescape still escapes the rest."""
    return "" if value is None else inert(value, newlines=lines)


def _time(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value
