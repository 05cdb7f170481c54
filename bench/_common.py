"""Shared plumbing for corral's benchmarks (not part of the corral package).

Every benchmark in ``bench/`` prints its figures and writes one JSON file under
``bench/results/`` (gitignored). Machines are shared and noisy, so benchmarks
repeat their measurement and quote medians; a comparison against a peer is made
in the same run, on the same machine, and quoted as a ratio.

Helpers here:

* ``percentile`` / ``median`` / ``summarize_ms``: order statistics.
* ``median_of_runs``: per-key medians of several repetitions of a figures dict.
* ``Result``: collects figures and writes ``bench/results/<name>-<timestamp>.json``
  with machine information.
* ``print_table`` / ``print_comparison``: plain-text tables for the terminal.
* ``fresh_database`` / ``fresh_schema``: an isolated PostgreSQL database or
  schema for one measurement, dropped afterwards.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

DEFAULT_PG_DSN = os.environ.get(
    "CORRAL_BENCH_PG_URL",
    os.environ.get("CORRAL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)

# --------------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation (numpy's default).

    NaN for an empty input.
    """
    data = sorted(values)
    if not data:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    rank = (len(data) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return data[lo]
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Summary of durations given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": _round(percentile(ms, 50)),
        "p90_ms": _round(percentile(ms, 90)),
        "p99_ms": _round(percentile(ms, 99)),
        "max_ms": _round(max(ms)) if ms else math.nan,
        "mean_ms": _round(sum(ms) / len(ms)) if ms else math.nan,
    }


def median_of_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-key median over repetitions of a (possibly nested) figures dict.

    Numbers are replaced by their median across runs; nested dicts are handled
    recursively; other values (strings, lists) are taken from the first run.
    """
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        vals = [r[key] for r in runs if key in r]
        if isinstance(first, bool):
            out[key] = first
        elif isinstance(first, int | float):
            m = median(float(v) for v in vals)
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in vals)
            out[key] = int(m) if ints and m == int(m) else _round(m)
        elif isinstance(first, Mapping):
            out[key] = median_of_runs([v for v in vals if isinstance(v, Mapping)])
        else:
            out[key] = first
    return out


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when undefined. Say in the label which way is better."""
    if not theirs or math.isnan(theirs) or math.isnan(ours):
        return math.nan
    return ours / theirs


def _round(x: float, digits: int = 3) -> float:
    return x if math.isnan(x) else round(x, digits)


# --------------------------------------------------------------------------- machine info


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            first = f.readline().split()
        info["mem_total_gib"] = round(int(first[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def _cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def background_cpu_percent(interval: float = 1.0) -> float:
    """Busy share of all CPUs (0-100) over ``interval`` seconds, blocking.

    Call it while the benchmark itself is idle: it tells how much of the
    machine something else is using (another session's test suite, say).
    NaN where /proc/stat is unavailable.
    """
    try:
        total0, idle0 = _cpu_jiffies()
        time.sleep(interval)
        total1, idle1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return math.nan
    total = total1 - total0
    return round(100.0 * (total - (idle1 - idle0)) / total, 1) if total > 0 else math.nan


def wait_for_quiet(threshold: float = 15.0, timeout: float = 120.0, interval: float = 1.0) -> float:
    """Block until the machine's background CPU use drops under ``threshold`` %.

    Gives up after ``timeout`` seconds (the figures are then taken on a busy
    machine; the caller should say so). Returns the last measured percentage.
    """
    deadline = time.monotonic() + timeout
    busy = background_cpu_percent(interval)
    while not busy < threshold and time.monotonic() < deadline:
        busy = background_cpu_percent(interval)
    return busy


class ForeignCpu:
    """CPU time used by *other* processes while a measurement runs.

    ``start()`` snapshots every process; ``stop()`` returns the CPU share (0-100,
    of all cores) that processes outside ``own_pids`` and not named in
    ``exclude_names`` (the database server, which serves the benchmark) used in
    between. A process that started meanwhile counts whole; one that exited
    meanwhile is missed, so this is a lower bound. Needs psutil; NaN without it.
    """

    def __init__(self, exclude_names: Iterable[str] = ("postgres",)) -> None:
        self.exclude_names = set(exclude_names)
        self._t0 = 0.0
        self._before: dict[int, tuple[float, float]] = {}

    def _sample(self) -> dict[int, tuple[float, float]]:
        import psutil

        out: dict[int, tuple[float, float]] = {}
        for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
            info = proc.info
            if info["name"] in self.exclude_names or info["cpu_times"] is None:
                continue
            t = info["cpu_times"]
            out[proc.pid] = (t.user + t.system, info["create_time"])
        return out

    def start(self) -> None:
        self._t0 = time.time()
        try:
            self._before = self._sample()
        except ImportError:
            self._before = {}

    def stop(self, own_pids: Iterable[int] = ()) -> float:
        try:
            after = self._sample()
        except ImportError:
            return math.nan
        wall = time.time() - self._t0
        own = {os.getpid(), *own_pids}
        used = 0.0
        for pid, (cpu, created) in after.items():
            if pid in own:
                continue
            prev = self._before.get(pid)
            if prev is not None and prev[1] == created:
                used += cpu - prev[0]
            elif created >= self._t0 - 1:
                used += cpu
        ncpu = os.cpu_count() or 1
        return round(100.0 * used / (wall * ncpu), 1) if wall > 0 else math.nan


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """Figures of one benchmark invocation, written as JSON.

    ``figures`` holds the headline numbers (medians over repetitions);
    ``runs`` the raw per-repetition figures; ``params`` what was measured.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started": self.started,
            "machine": machine_info(),
            "params": self.params,
            "figures": self.figures,
            "runs": self.runs,
            "notes": self.notes,
        }

    def write(self, directory: Path | None = None) -> Path:
        directory = directory or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}-{self.started}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path


# --------------------------------------------------------------------------- printing


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    file: Any = None,
) -> None:
    """Print a plain aligned table: first column left, the others right."""
    out = file or sys.stdout
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(widths[i]) for i, c in enumerate(row) if i > 0]
        return "  ".join(parts)

    print(f"\n{title}", file=out)
    print(line(list(headers)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)
    out.flush()


def print_comparison(
    title: str,
    rows: Iterable[tuple[str, float, float]],
    *,
    ours: str = "corral",
    theirs: str = "peer",
) -> None:
    """Rows of (figure, ours, theirs); adds the ours/theirs ratio column."""
    print_table(
        title,
        ["figure", ours, theirs, f"{ours}/{theirs}"],
        [(label, a, b, ratio(a, b)) for label, a, b in rows],
    )


# --------------------------------------------------------------------------- PostgreSQL isolation


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe identifier {name!r}")
    return f'"{name}"'


def pg_url(base_dsn: str, **overrides: str) -> str:
    """``base_dsn`` (URL or key=value) as a ``postgresql://`` URL, with overrides.

    URLs because corral's store takes one (``CORRAL_STATE_URL``); psycopg and
    procrastinate accept them too.
    """
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params: dict[str, Any] = {**conninfo_to_dict(base_dsn), **overrides}
    user = params.pop("user", None)
    password = params.pop("password", None)
    host = params.pop("host", None) or ""
    port = params.pop("port", None)
    dbname = params.pop("dbname", None) or ""
    auth = ""
    if user:
        auth = quote(str(user), safe="")
        if password:
            auth += ":" + quote(str(password), safe="")
        auth += "@"
    netloc = auth + (f"[{host}]" if ":" in str(host) else str(host))
    if port:
        netloc += f":{port}"
    query = (
        f"?{urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)}" if params else ""
    )
    return f"postgresql://{netloc}/{quote(str(dbname), safe='')}{query}"


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}".lower()


@asynccontextmanager
async def fresh_database(
    base_dsn: str = DEFAULT_PG_DSN, prefix: str = "bench"
) -> AsyncIterator[str]:
    """Create an empty database next to ``base_dsn``'s; yield its URL; drop it.

    The drop uses ``WITH (FORCE)`` so connections left open by a crashed worker
    do not keep it alive.
    """
    import psycopg

    name = _unique_name(prefix)
    async with await psycopg.AsyncConnection.connect(base_dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {_ident(name)}")  # type: ignore[arg-type]
    try:
        yield pg_url(base_dsn, dbname=name)
    finally:
        async with await psycopg.AsyncConnection.connect(base_dsn, autocommit=True) as conn:
            await conn.execute(
                f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)"  # type: ignore[arg-type]
            )


@asynccontextmanager
async def fresh_schema(base_dsn: str = DEFAULT_PG_DSN, prefix: str = "bench") -> AsyncIterator[str]:
    """Create an empty schema; yield a URL whose search_path is that schema; drop it.

    Cheaper than a database, but only isolates code that does not name schemas
    explicitly (extensions, ``public.`` prefixes).
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = _unique_name(prefix)
    async with await psycopg.AsyncConnection.connect(base_dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA {_ident(name)}")  # type: ignore[arg-type]
    options = conninfo_to_dict(base_dsn).get("options") or ""
    options = f"{options} -c search_path={name}".strip()
    try:
        yield pg_url(base_dsn, options=options)
    finally:
        async with await psycopg.AsyncConnection.connect(base_dsn, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(name)} CASCADE")  # type: ignore[arg-type]


@asynccontextmanager
async def fresh_store(dialect: str, base_dsn: str = DEFAULT_PG_DSN) -> AsyncIterator[str]:
    """The URL of an empty store of ``dialect`` for one measurement, removed after it: a
    SQLite file in a temporary directory, or a PostgreSQL schema of its own."""
    if dialect == "sqlite":
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'state.db'}"
    elif dialect == "postgresql":
        async with fresh_schema(base_dsn) as url:
            yield url
    else:
        raise SystemExit(f"unknown store {dialect!r}: say sqlite or postgresql (--stores)")
