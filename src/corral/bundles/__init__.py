"""corral.bundles: the project as a content-addressed bundle, and a runner's cache of them.

packed = pack(project_root)            # Packed: data, hash "sha256:…", agents manifest
entries = unpack(data, target, expect=packed.hash)
cache = BundleCache(directory, fetch)  # verified, LRU-bounded local copies by hash
"""

from corral.bundles._format import (
    HASH_PREFIX,
    MAX_BUNDLE_BYTES,
    MAX_FILE_BYTES,
    BundleError,
    Entry,
    Packed,
    agent_archive,
    archive,
    bundle_hash,
    excluded,
    manifest_of,
    normalize_hash,
    pack,
    read_entries,
    unpack,
)
from corral.bundles.cache import BundleCache, http_fetcher

__all__ = [
    "HASH_PREFIX",
    "MAX_BUNDLE_BYTES",
    "MAX_FILE_BYTES",
    "BundleCache",
    "BundleError",
    "Entry",
    "Packed",
    "agent_archive",
    "archive",
    "bundle_hash",
    "excluded",
    "http_fetcher",
    "manifest_of",
    "normalize_hash",
    "pack",
    "read_entries",
    "unpack",
]
