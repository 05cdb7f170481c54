"""A run's log on a real file: a silent run still leaves its (empty) log, and values
are redacted however the output is cut, with the redactor built at the first output."""

from __future__ import annotations

import stat
from pathlib import Path

from corral.scheduler.runlog import RunLog

SECRET = "s3cr3t-" + "Kq9" * 10


async def test_a_silent_run_leaves_an_empty_private_log(tmp_path: Path) -> None:
    path = tmp_path / "proj" / ".corral" / "logs" / "r1.log"
    async with RunLog(path, None, [SECRET]) as log:
        await log.write(b"")
    assert path.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_value_cut_across_chunks_and_the_end_is_redacted(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "r2.log"
    seen: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        seen.append(chunk)

    value = SECRET.encode()
    async with RunLog(path, sink, [SECRET, "other-value-1234"]) as log:
        await log.write(b"")  # nothing yet: no redactor needed
        await log.write(b"token=" + value[:5])
        await log.write(value[5:] + b"\nlast=")
        await log.write(value[:-1])  # the rest arrives never: the tail is let out at the end
    stored = path.read_bytes()
    expected = b"token=[REDACTED]\nlast=" + value[:-1]
    assert stored == expected
    assert b"".join(seen) == expected
