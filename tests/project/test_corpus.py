"""Malformed projects and the exact message each one gets.

To add a case, create ``corpus/<case-name>/`` holding a small project and an
``expected.txt`` with the full error text. Run with ``CORRAL_REGEN_CORPUS=1``
to (re)write every ``expected.txt`` from the current output, then read each
diff: these messages are what users see.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
REGENERATE = os.environ.get("CORRAL_REGEN_CORPUS") == "1"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_malformed_project_is_explained(case: str) -> None:
    folder = CORPUS / case
    with pytest.raises(ConfigError) as caught:
        load_project(folder)
    rendered = str(caught.value)
    expected_file = folder / "expected.txt"
    if REGENERATE:
        expected_file.write_text(rendered + "\n", encoding="utf-8")
    assert rendered == expected_file.read_text(encoding="utf-8").rstrip("\n")
