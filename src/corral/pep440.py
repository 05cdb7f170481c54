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


_PARTS = re.compile(
    r"(?:(?P<epoch>[0-9]+)!)?(?P<release>[0-9]+(?:\.[0-9]+)*)"
    r"(?:(?P<pre_l>a|b|rc)(?P<pre_n>[0-9]+))?(?:\.post(?P<post>[0-9]+))?"
    r"(?:\.dev(?P<dev>[0-9]+))?(?:\+(?P<local>[a-z0-9]+(?:\.[a-z0-9]+)*))?",
    re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "b": 1, "rc": 2}

SortKey = tuple[object, ...]


def is_prerelease(text: str) -> bool:
    """Whether version ``text`` is a pre-release (``a``, ``b``, ``rc``) or a development
    release (``.dev``), which the ``stable`` channel leaves out."""
    match = _PARTS.fullmatch(text)
    return match is not None and (match["pre_l"] is not None or match["dev"] is not None)


def sort_key(text: str) -> SortKey:
    """The order PEP 440 gives versions: 1.0.dev1 < 1.0a1 < 1.0b2 < 1.0rc1 < 1.0 <
    1.0.post1 < 1.0.1 (trailing zeros of the release do not count: 1.0 == 1.0.0). For a
    version as ``is_version`` spells it; anything else sorts first."""
    match = _PARTS.fullmatch(text)
    if match is None:
        return (-1,)
    release = [int(part) for part in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre_l, dev, post = match["pre_l"], match["dev"], match["post"]
    if pre_l is not None:
        pre: tuple[int, ...] = (0, _PRE_RANK[pre_l.lower()], int(match["pre_n"]))
    elif dev is not None and post is None:
        pre = (-1,)  # 1.0.dev1 comes before 1.0a1
    else:
        pre = (1,)
    return (
        int(match["epoch"] or 0),
        tuple(release),
        pre,
        (int(post),) if post is not None else (-1,),
        (0, int(dev)) if dev is not None else (1, 0),
        match["local"] or "",
    )
