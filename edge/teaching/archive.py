"""Examples in and out as zip archives: one folder per class, as ``teachcam train --data`` and any folder-per-class
tool read them.

The export reads the store as it is on disk (a read-only :class:`EnrollmentStore`: a generation is complete), so
the web process writes one without a :class:`Teacher` and without the daemon's help. The import side only reads
and bounds the archive (a zip bomb is refused); enrolling what it holds is the caller's job.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from teachcam.edge.errors import StoreError
from teachcam.edge.model.images import IMAGE_SUFFIXES
from teachcam.edge.teaching.store import EnrollmentStore

EXPORT_MANIFEST = "teachcam-export.json"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def export_store(store_path: str | Path, archive: Path) -> int:
    """The store at ``store_path``, opened read-only, as a zip at ``archive``; the number of examples."""
    with EnrollmentStore.open(store_path, writable=False) as store:
        return export_archive(store, archive)


def export_archive(store: EnrollmentStore, archive: Path) -> int:
    """Write every example's thumbnail into a zip laid out one folder per class, plus labels.csv.

    ``teachcam train --data ARCHIVE`` reads it as it is (and so does any tool that takes
    a folder per class once unzipped).
    """
    archive = Path(archive)
    snapshot = store.snapshot
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "label"])
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for example in snapshot.examples:
                member = f"{example.label}/{example.thumb[:16]}.png"
                out.write(store.thumb_path(example.thumb), member)
                writer.writerow([member, example.label])
            out.writestr("labels.csv", rows.getvalue())
            out.writestr(EXPORT_MANIFEST, json.dumps({
                "format": "teachcam-export", "version": 1, "fingerprint": snapshot.fingerprint,
                "classes": store.counts(), "exported": time.time()},
                ensure_ascii=False, indent=2))
        tmp.replace(archive)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {archive} ({exc.strerror or exc})") from None
    return len(snapshot.examples)


ARCHIVE_MAX_ENTRIES = 20_000
ARCHIVE_MAX_ENTRY = 32 * 1024 * 1024  # bytes, uncompressed, one image
ARCHIVE_MAX_TOTAL = 1024 * 1024 * 1024  # bytes, uncompressed, the whole archive (read one entry at a time)
ARCHIVE_MAX_RATIO = 100  # uncompressed / compressed, for every entry past RATIO_FREE bytes: a zip bomb
RATIO_FREE = 64 * 1024  # a small entry may compress well (a flat PNG); past this, camera pictures barely shrink


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """One entry's bytes, read in chunks and stopped as soon as it expands past what its compressed size allows
    (the header's sizes may lie): never more than ARCHIVE_MAX_ENTRY in memory."""
    allowed = min(ARCHIVE_MAX_ENTRY, max(RATIO_FREE, ARCHIVE_MAX_RATIO * max(1, info.compress_size)))
    if info.file_size > allowed:
        raise StoreError(f"{name}: {info.filename} would expand to {info.file_size:,} bytes from "
                         f"{info.compress_size:,} — refused (a zip bomb, or an image far larger than a camera's)")
    data = bytearray()
    with zf.open(info) as member:
        while chunk := member.read(1 << 16):
            data += chunk
            if len(data) > allowed:
                raise StoreError(f"{name}: {info.filename} expands past {allowed:,} bytes — refused (a zip bomb)")
    return bytes(data)


def iter_archive(archive: Path | bytes | BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(label, image bytes) for every image in a teachcam export (or any zip with one folder per class), one at a
    time: a path, the archive's bytes, or an open file (an upload spooled to disk). Every entry is checked before
    it is read and while it is read (count, size, compression ratio, the running total).

    Raises:
        StoreError: not a readable zip, or one that would expand past the limits (a zip bomb) — at the entry
            where it does (the entries before it have been yielded).
    """
    name = "the archive" if not isinstance(archive, (str, Path)) else str(archive)
    source = io.BytesIO(archive) if isinstance(archive, (bytes, bytearray)) else archive
    try:
        with zipfile.ZipFile(source) as zf:
            entries = [i for i in zf.infolist() if not i.is_dir() and len(i.filename.split("/")) >= 2
                       and i.filename.lower().endswith(IMAGE_SUFFIXES)]
            if len(entries) > ARCHIVE_MAX_ENTRIES:
                raise StoreError(f"{name} has {len(entries)} images; at most {ARCHIVE_MAX_ENTRIES} at a time")
            total = 0
            for info in entries:
                data = _read_member(zf, info, name)
                total += len(data)
                if total > ARCHIVE_MAX_TOTAL:
                    raise StoreError(f"{name} expands past {ARCHIVE_MAX_TOTAL:,} bytes — refused")
                yield info.filename.split("/")[-2], data
    except FileNotFoundError:
        raise StoreError(f"archive not found: {archive}") from None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise StoreError(f"{name} is not a readable zip archive ({exc})") from None


def read_archive(archive: Path | bytes | BinaryIO) -> list[tuple[str, bytes]]:
    """Every (label, image bytes) of :func:`iter_archive` at once (the CLI's import; a server reads one at a time).

    Raises:
        StoreError: as :func:`iter_archive`; nothing is returned then.
    """
    return list(iter_archive(archive))
