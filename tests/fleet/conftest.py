"""The fleet suite uses the store suite's raw access to a database."""

from tests.store.conftest import raw_sql

__all__ = ["raw_sql"]
