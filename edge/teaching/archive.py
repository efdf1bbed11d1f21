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
from pathlib import Path

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
ARCHIVE_MAX_TOTAL = 1024 * 1024 * 1024  # bytes, uncompressed, the whole archive
ARCHIVE_MAX_RATIO = 200  # uncompressed / compressed for one entry above 1 MB: a zip bomb


def read_archive(archive: Path | bytes) -> list[tuple[str, bytes]]:
    """(label, image bytes) for every image in a teachcam export (or any zip with one folder per class):
    a path, or the archive's bytes (an upload).

    Raises:
        StoreError: not a readable zip, or one that would expand past the limits (a zip bomb).
    """
    name = "the archive" if isinstance(archive, (bytes, bytearray)) else str(archive)
    try:
        with zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, (bytes, bytearray)) else archive) as zf:
            entries = [i for i in zf.infolist() if not i.is_dir() and len(i.filename.split("/")) >= 2
                       and i.filename.lower().endswith(IMAGE_SUFFIXES)]
            if len(entries) > ARCHIVE_MAX_ENTRIES:
                raise StoreError(f"{name} has {len(entries)} images; at most {ARCHIVE_MAX_ENTRIES} at a time")
            total, out = 0, []
            for info in entries:
                if info.file_size > ARCHIVE_MAX_ENTRY or (
                        info.file_size > 1024 * 1024 and info.file_size > ARCHIVE_MAX_RATIO * max(1, info.compress_size)):
                    raise StoreError(f"{name}: {info.filename} would expand to {info.file_size:,} bytes — refused "
                                     "(a zip bomb, or an image far larger than a camera's)")
                with zf.open(info) as member:  # the header's size may lie: read no more than the limit
                    data = member.read(ARCHIVE_MAX_ENTRY + 1)
                if len(data) > ARCHIVE_MAX_ENTRY:
                    raise StoreError(f"{name}: {info.filename} expands past {ARCHIVE_MAX_ENTRY:,} bytes — refused")
                total += len(data)
                if total > ARCHIVE_MAX_TOTAL:
                    raise StoreError(f"{name} expands past {ARCHIVE_MAX_TOTAL:,} bytes — refused")
                out.append((info.filename.split("/")[-2], data))
            return out
    except FileNotFoundError:
        raise StoreError(f"archive not found: {archive}") from None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise StoreError(f"{name} is not a readable zip archive ({exc})") from None
