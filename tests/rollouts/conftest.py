"""The dashboard fixtures (a running fleet, a signed-in client) for the rollouts page."""

from tests.dashboard.conftest import fleet, http, signed_in

__all__ = ["fleet", "http", "signed_in"]
