"""The line locator: paths to the line they were written on."""

from __future__ import annotations

from corral.project._toml import Locator

TEXT = '''\
# comment
scale = 2
models = [
  "a",
  "b = 3",
]
[hooks]
pre = ["x"]
[[webhooks]]
source = "a"
[[webhooks]]
source = "b"
events = ["issues"]
[models."son.net"]
provider = 'x'
doc = """
fake = 1
"""
after = 1
'''


def test_locator_finds_keys_tables_and_array_entries() -> None:
    locator = Locator.from_toml(TEXT)
    assert locator.line_for(("scale",)) == 2
    assert locator.line_for(("models", 1)) == 3  # list items fall back to the key
    assert locator.line_for(("hooks", "pre")) == 8
    assert locator.line_for(("webhooks", 0, "source")) == 10
    assert locator.line_for(("webhooks", 1, "events", 0)) == 13
    assert locator.line_for(("models", "son.net", "provider")) == 15
    assert locator.line_for(("models", "son.net", "after")) == 19
    assert locator.line_for(("models", "son.net", "fake")) == 14  # inside a string: not a key
    assert locator.line_for(("nothing",)) is None
