"""The fleet suite uses the store suite's raw access to a database and the CLI suite's
`corral` runner."""

from tests.cli.conftest import corral
from tests.store.conftest import raw_sql

__all__ = ["corral", "raw_sql"]
