"""The store's clock and timestamp checks (see ``_base`` for why the clock is Python's)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["require_aware", "utc_now"]


def utc_now() -> datetime:
    """The store's clock: an aware UTC datetime."""
    return datetime.now(UTC)


def require_aware(value: datetime, what: str) -> datetime:
    """``value`` in UTC; ValueError for a naive datetime (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)
