"""Write a bundle folder atomically: everything goes into a temporary sibling, then one rename.

A reader never sees a half-written bundle: either the old folder (or none) or the new one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge import __version__
from edge.adapters import input_specs, output_specs
from edge.bundle import FORMAT_VERSION, MANIFEST, file_sha256
from edge.errors import BundleError
from edge.runtime import make_interpreter


def describe_model(path: Path, *, role: str, precision: str, head: str | None = None, **extra) -> dict:
    """A manifest ``models`` entry for one TFLite file, with tensors read from the file itself."""
    interpreter = make_interpreter(path, num_threads=1)
    entry = {
        "file": path.name,
        "role": role,
        "precision": precision,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "inputs": [s.as_manifest() for s in input_specs(interpreter)],
        "outputs": [s.as_manifest() for s in output_specs(interpreter)],
    }
    if head is not None:
        entry["head"] = head
    entry.update(extra)
    return entry


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        what = "a bundle" if (out / MANIFEST).exists() else "something"
        raise BundleError(f"{out} already holds {what}; pass --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not a folder; choose another --out")


@contextmanager
def staging_folder(out: Path, force: bool):
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename."""
    out = Path(out)
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)
    try:
        yield staging
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(trash)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Complete ``manifest`` (versions, time, sha256 of every file) and write it to ``folder``."""
    files = {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    full = {
        "format_version": FORMAT_VERSION,
        "generator": f"teachcam {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return full
