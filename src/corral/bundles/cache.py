"""A runner's local cache of bundles: fetched by hash, verified, kept, bounded.

    cache = BundleCache(Path("~/.corral/bundles"), http_fetcher(url, credential))
    path = await cache.get("sha256:…")                  # the project bundle's file
    path = await cache.get(agent_hash, agent="dev", within="sha256:…")  # one agent's

A bundle is named by the SHA-256 of its bytes, so a cached copy is checked against its
name every time it is handed out: a file damaged on disk (or written half-way by a crash)
is removed and fetched again, never used. Fetched bytes are checked the same way before
they are kept, and are written to a temporary file first and renamed into place, so a
reader never sees a partial file. The cache holds at most ``max_bytes`` (and
``max_entries``) of bundles: each use marks a bundle recently used (its mtime), and the
least recently used ones are removed when a new one does not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from corral.bundles._format import HASH_PREFIX, BundleError, bundle_hash, normalize_hash

__all__ = ["BundleCache", "Fetch", "http_fetcher"]

#: Fetch the bytes of a bundle: ``(project bundle hash, agent or None) -> bytes`` (with an
#: agent: that agent's bundle, cut from the project bundle).
Fetch = Callable[[str, str | None], Awaitable[bytes]]

_SUFFIX = ".tar"


class BundleCache:
    """Verified local copies of bundles in ``directory``, LRU-bounded."""

    def __init__(
        self,
        directory: Path,
        fetch: Fetch,
        *,
        max_bytes: int = 512 << 20,
        max_entries: int = 256,
    ) -> None:
        if max_bytes <= 0 or max_entries <= 0:
            raise ValueError("max_bytes and max_entries must be > 0")
        self.directory = Path(directory).expanduser()
        self.fetch = fetch
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._lock = asyncio.Lock()
        #: How many times bytes were fetched (a hit fetches nothing).
        self.fetches = 0

    def path_of(self, hash_: str) -> Path:
        return self.directory / (normalize_hash(hash_).removeprefix(HASH_PREFIX) + _SUFFIX)

    async def get(self, hash_: str, *, agent: str | None = None, within: str | None = None) -> Path:
        """The cached file of bundle ``hash_``, fetched first when it is missing or damaged.

        For one agent's bundle, ``hash_`` is the hash the manifest names for it, ``agent``
        its name and ``within`` the project bundle it belongs to."""
        wanted = normalize_hash(hash_)
        if (agent is None) != (within is None):
            raise ValueError("give both agent and within (the project bundle), or neither")
        path = self.path_of(wanted)
        async with self._lock:
            if await asyncio.to_thread(self._verified, path, wanted):
                return path
            data = await self.fetch(normalize_hash(within) if within else wanted, agent)
            self.fetches += 1
            got = bundle_hash(data)
            if got != wanted:
                raise BundleError(
                    f"the control plane sent bytes that hash to {got} for bundle {wanted}; "
                    "nothing was cached (a proxy altering responses, or a damaged store row)"
                )
            await asyncio.to_thread(self._keep, path, data)
            return path

    async def read(
        self, hash_: str, *, agent: str | None = None, within: str | None = None
    ) -> bytes:
        path = await self.get(hash_, agent=agent, within=within)
        return await asyncio.to_thread(path.read_bytes)

    def cached(self) -> list[str]:
        """The hashes held now, most recently used first."""
        return [HASH_PREFIX + path.name.removesuffix(_SUFFIX) for path in self._by_age()[::-1]]

    # -- on disk ------------------------------------------------------------------------

    def _verified(self, path: Path, wanted: str) -> bool:
        """True when ``path`` holds exactly bundle ``wanted`` (marked used); a damaged copy
        is removed."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        if bundle_hash(data) != wanted:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def _keep(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._evict(room_for=len(data))
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def _by_age(self) -> list[Path]:
        """Cached files, least recently used first."""
        found = []
        for path in self.directory.glob("*" + _SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime_ns, path.name, path))
        return [path for _, _, path in sorted(found)]

    def _evict(self, room_for: int) -> None:
        files = self._by_age()
        sizes = {path: path.stat().st_size for path in files if path.exists()}
        total = sum(sizes.values())
        while files and (total + room_for > self.max_bytes or len(files) + 1 > self.max_entries):
            oldest = files.pop(0)
            total -= sizes.get(oldest, 0)
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()


def http_fetcher(base_url: str, credential: str, *, timeout: float = 60.0) -> Fetch:
    """Fetch bundles from a control plane's ``GET /fleet/v1/bundles/{hash}`` (and
    ``/agents/{agent}``), authenticated by ``credential`` (a bearer token)."""
    base = base_url.rstrip("/")

    async def fetch(hash_: str, agent: str | None) -> bytes:
        where = f"{base}/fleet/v1/bundles/{hash_}"
        if agent is not None:
            where += f"/agents/{agent}"
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(where, headers={"Authorization": f"Bearer {credential}"})
        if response.status_code != 200:
            raise BundleError(
                f"cannot fetch bundle {hash_} from {where}: {response.status_code} "
                f"{response.text[:200]}"
            )
        return response.content

    return fetch
