"""Wheels of corral at other versions, made in the test from this source tree: its
``src/corral`` packed as a wheel (a zip with a ``.dist-info``: METADATA, WHEEL, RECORD)
whose ``_version.py`` says ``version`` (and, for a bad version, a module changed). No
build backend runs: offline, in well under a second, without the optional C part."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(
    version: str, out: Path, *, patch: dict[str, tuple[str, str]] | None = None
) -> Path:
    """A wheel of this corral saying it is ``version``; ``patch``: paths under corral/
    -> (text, its replacement) in that module (a broken probe, a failing start)."""
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"corral-{version}-py3-none-any.whl"
    files: dict[str, bytes] = {}
    package = ROOT / "src" / "corral"
    for path in sorted(package.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".so", ".pyc"):
            continue
        rel = path.relative_to(package).as_posix()
        data = path.read_bytes()
        if rel == "_version.py":
            data = f'__version__ = "{version}"\n'.encode()
        if patch and rel in patch:
            old, new = patch[rel]
            assert old.encode() in data, f"{rel} has no {old!r}"
            data = data.replace(old.encode(), new.encode())
        files[f"corral/{rel}"] = data
    info = f"corral-{version}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: corral\nVersion: {version}\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: corral-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel
