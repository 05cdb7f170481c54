"""Versions as PEP 440 spells them: what may name a corral version (and a directory of
one on a runner)."""

import re

# A PEP 440 public version, with an optional local part (1.2.0, 1.2.0rc1, 1!2.0.post1.dev3,
# 1.2.0+abc.5): no path separator, no "..", nothing a shell or a path would read.
_PEP440 = re.compile(
    r"(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*"
    r"(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?",
    re.IGNORECASE,
)


def is_version(text: str) -> bool:
    """Whether ``text`` is a version as PEP 440 spells it (normalized: 1.2.0, 1.2.0rc1,
    1.2.0.post1, 1.2.0.dev3, 1.2.0+local), at most 64 characters."""
    return len(text) <= 64 and _PEP440.fullmatch(text) is not None
