"""The enrollment store (contract 2 of docs/contracts.md): what a person taught, kept through anything.

Layout of a store folder::

    store/
      gen-00000012.tcs     the current generation: header (JSON) + embeddings + sha256 trailer
      gen-00000011.tcs     the previous generation, kept
      thumbs/3f/3fa4….png  one thumbnail per example (model input size), content-addressed, written once
      damaged/             generations that failed their checksum, moved aside (never deleted)
      .lock                held (flock) by the one process that may write

Every write is atomic: a temporary file in the same folder, fsync, rename, fsync of the
folder. A thumbnail is durable before the generation that refers to it. Loading picks
the newest generation whose checksum holds; a damaged one is reported and moved aside,
and the one before it is used. So a power cut or SIGKILL at any moment loses at most
the example being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.edge.errors import StoreError, StoreVersionError
from teachcam.edge.teaching.durable import FILE_MODE, FOLDER_MODE, fsync_dir, make_folder, write_atomic
from teachcam.edge.teaching.history import Action
from teachcam.edge.teaching.names import MAX_NAME_LENGTH, check_class_name  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the undo history and its limbo; a generation with an empty limbo is still written as 1
MAGIC = b"TEACHCAM-STORE\n"
KEEP_GENERATIONS = 2
_GEN_RE = re.compile(r"^gen-(\d{8})\.tcs$")


@dataclass
class Example:
    """One enrolled example: its class, thumbnail (content hash) and when it was added."""

    label: str
    thumb: str
    added: float  # seconds since the epoch, to the µs (as stored: the id must be the same after a restart)
    source: str = ""
    region: str = ""  # a camera frame's focus region when it was taken (region_key: "whole", "x0,y0,x1,y1"); "": not one
    space: str = ""  # "": embedded by the store's embedder (its fingerprint); "cpu": the CPU's stand-in for the AI Camera

    @property
    def id(self) -> str:
        """A stable id for this example: when it was added (µs) and its thumbnail."""
        return f"{int(self.added * 1e6):x}-{self.thumb[:8]}"

    def as_json(self) -> dict:
        out = {"label": self.label, "thumb": self.thumb, "added": round(self.added, 6), "source": self.source}
        if self.region:
            out["region"] = self.region
        if self.space:
            out["space"] = self.space
        return out


@dataclass
class Snapshot:
    """The in-memory content of one generation."""

    fingerprint: str
    embedding_size: int
    examples: list[Example] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (N, D) float32, L2-normalized
    classes: list[str] = field(default_factory=list)  # every class, in creation order (may have 0 examples)
    generation: int = 0
    history: list[Action] = field(default_factory=list)  # what undo can take back, newest last (teaching.history)
    limbo: list[Example] = field(default_factory=list)  # examples the history may bring back
    limbo_embeddings: np.ndarray | None = None  # their (normalized) embeddings

    def __post_init__(self):
        if self.embeddings is None:
            self.embeddings = np.zeros((0, self.embedding_size), np.float32)
        if self.limbo_embeddings is None:
            self.limbo_embeddings = np.zeros((0, self.embeddings.shape[1] if self.embeddings.ndim == 2 else
                                              self.embedding_size), np.float32)


def thumbnail_digest(pixels: np.ndarray) -> str:
    """The content address of a thumbnail."""
    pixels = np.ascontiguousarray(pixels, np.uint8)
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def encode_generation(snapshot: Snapshot) -> bytes:
    header = {
        "format_version": FORMAT_VERSION if snapshot.limbo else 1,  # readable by an older teachcam when it can be
        "fingerprint": snapshot.fingerprint,
        "embedding_size": snapshot.embedding_size,
        "embedding_dtype": "float16",
        "classes": snapshot.classes,
        "examples": [e.as_json() for e in snapshot.examples],
        "written": round(time.time(), 3),
    }
    if snapshot.history:
        header["history"] = [action.as_json() for action in snapshot.history]
    if snapshot.limbo:
        header["limbo"] = [e.as_json() for e in snapshot.limbo]  # their rows follow the examples' in the body
    header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
    body = snapshot.embeddings.astype("<f2").tobytes()
    if snapshot.limbo:
        body += snapshot.limbo_embeddings.astype("<f2").tobytes()
    payload = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + body
    return payload + hashlib.sha256(payload).digest()


def decode_generation(data: bytes, name: str) -> Snapshot:
    """Parse one generation file. Raises StoreError (damaged) or StoreVersionError (newer)."""
    if len(data) < len(MAGIC) + 8 + 32 or not data.startswith(MAGIC):
        raise StoreError(f"{name} is not a teachcam store file or is truncated")
    payload, digest = data[:-32], data[-32:]
    if hashlib.sha256(payload).digest() != digest:
        raise StoreError(f"{name} is damaged (checksum mismatch)")
    (header_len,) = struct.unpack("<Q", payload[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    header = json.loads(payload[start : start + header_len].decode("utf-8"))
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreVersionError(
            f"the store was written by a newer teachcam (store format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade teachcam — the store was left untouched"
        )
    size = int(header["embedding_size"])

    def examples_of(entries) -> list[Example]:
        return [Example(e["label"], e["thumb"], float(e["added"]), e.get("source", ""), e.get("region", ""),
                        e.get("space", "")) for e in entries]

    examples, limbo = examples_of(header["examples"]), examples_of(header.get("limbo", ()))
    body = payload[start + header_len :]
    rows = np.frombuffer(body, "<f2").astype(np.float32)
    if rows.size != (len(examples) + len(limbo)) * size:
        raise StoreError(f"{name} is damaged (embedding table has the wrong size)")
    rows = rows.reshape(len(examples) + len(limbo), size)
    return Snapshot(header["fingerprint"], size, examples, rows[: len(examples)],
                    list(header.get("classes") or dict.fromkeys(e.label for e in examples)),
                    history=[Action.from_json(a) for a in header.get("history", ())], limbo=limbo,
                    limbo_embeddings=rows[len(examples):])


def count_examples(snapshot: Snapshot) -> dict[str, int]:
    """Examples per class of one generation (every class, 0 for an empty one), in the classes' order."""
    counts = dict.fromkeys(snapshot.classes, 0)
    for example in snapshot.examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    return counts


class EnrollmentStore:
    """A store folder opened for reading and (with the lock) writing.

    Example usage::

        with EnrollmentStore.open("store", fingerprint=embedder.fingerprint, embedding_size=1280) as store:
            store.commit(store.snapshot)   # durable
    """

    def __init__(self, path: Path, snapshot: Snapshot, lock_fd: int | None):
        self.path = path
        self.snapshot = snapshot
        self._lock_fd = lock_fd

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, fingerprint: str = "", embedding_size: int = 0, writable: bool = True,
             create: bool = True) -> EnrollmentStore:
        """Open (and by default create and lock) the store at ``path``.

        Raises:
            StoreError: not a folder, not writable, locked by another process, or no
                readable generation while damaged ones exist.
            StoreVersionError: written by a newer teachcam.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store folder")
        if not path.exists():
            if not create:
                raise StoreError(f"no store at {path}")
            try:
                make_folder(path)
            except OSError as exc:
                raise StoreError(f"cannot create the store folder {path} ({exc.strerror})") from None
        lock_fd = cls._lock(path) if writable else None
        if writable:
            cls._remove_partial_writes(path)
            cls._tighten(path)
        try:
            snapshot = cls._load_latest(path, writable)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if snapshot is None:
            snapshot = Snapshot(fingerprint, embedding_size)
        return cls(path, snapshot, lock_fd)

    @staticmethod
    def _lock(path: Path) -> int:
        if not os.access(path, os.W_OK):
            raise StoreError(f"the store folder {path} is not writable by this user; fix its permissions "
                             "(under systemd it belongs to the teachcam user)")
        try:
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot open {path / '.lock'} ({exc.strerror})") from None
        with contextlib.suppress(OSError):
            os.fchmod(fd, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"the store {path} is in use by another teachcam process (pid {holder}); "
                             "stop it first (e.g. `systemctl stop teachcam`)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @staticmethod
    def _tighten(path: Path) -> None:
        """A store made before modes were set (files 0644 under umask 022): the folders to FOLDER_MODE, so that
        nobody outside the owner and the group can reach a thumbnail."""
        for folder in (path, path / "thumbs"):
            with contextlib.suppress(OSError):
                if folder.is_dir() and folder.stat().st_mode & 0o777 != FOLDER_MODE:
                    os.chmod(folder, FOLDER_MODE)

    @staticmethod
    def _remove_partial_writes(path: Path) -> None:
        """Temporary files of a write that never reached its rename (the writer died): never live data."""
        for tmp in [*path.glob(".*.tmp-*"), *path.glob("thumbs/*/.*.tmp-*")]:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def generations(path: Path) -> list[tuple[int, Path]]:
        found = []
        for entry in path.iterdir():
            match = _GEN_RE.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return sorted(found, reverse=True)

    @classmethod
    def _load_latest(cls, path: Path, writable: bool) -> Snapshot | None:
        damaged = []
        for generation, file in cls.generations(path):
            try:
                snapshot = decode_generation(file.read_bytes(), file.name)
            except StoreVersionError:
                raise
            except (StoreError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                message = str(exc) if isinstance(exc, StoreError) else f"{file.name} is damaged ({exc})"
                log.error("store %s: %s; falling back to the previous generation", path, message)
                damaged.append(file)
                continue
            except OSError as exc:
                raise StoreError(f"cannot read {file} ({exc.strerror})") from None
            snapshot.generation = generation
            if damaged:
                log.warning("store %s: using generation %d; damaged files moved to %s", path, generation,
                            path / "damaged")
            if writable:
                cls._set_aside(path, damaged)
            return snapshot
        if damaged:
            if writable:
                cls._set_aside(path, damaged)
            raise StoreError(f"every generation of the store {path} is damaged (moved to {path / 'damaged'}); "
                             "the thumbnails are still in thumbs/ — see `teachcam store --help` to start over")
        return None

    @staticmethod
    def _set_aside(path: Path, files: list[Path]) -> None:
        if not files:
            return
        target = path / "damaged"
        make_folder(target)
        for file in files:
            file.rename(target / f"{file.name}.{int(time.time())}")
        fsync_dir(path)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.snapshot.fingerprint

    def counts(self) -> dict[str, int]:
        return count_examples(self.snapshot)

    def thumb_path(self, digest: str) -> Path:
        return self.path / "thumbs" / digest[:2] / f"{digest}.png"

    def thumbnail_bytes(self, digest: str) -> bytes:
        """The PNG file of one example's thumbnail, by its id (the sha256 of its pixels).

        Raises:
            StoreError: not a thumbnail id, or no such thumbnail in this store.
        """
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise StoreError("a thumbnail id is the 64 hex digits of its sha256")
        if not any(e.thumb == digest for e in self.snapshot.examples):
            raise StoreError(f"no example with thumbnail {digest[:12]}… in the store")
        try:
            return self.thumb_path(digest).read_bytes()
        except OSError as exc:
            raise StoreError(f"thumbnail {digest[:12]} in {self.path} cannot be read ({exc})") from None

    def read_thumbnail(self, digest: str) -> np.ndarray:
        try:
            with Image.open(self.thumb_path(digest)) as image:
                return np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, ValueError) as exc:
            raise StoreError(f"thumbnail {digest[:12]} in {self.path} cannot be read ({exc})") from None

    # -- writing -------------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"the store {self.path} was opened read-only")

    def write_thumbnail(self, pixels: np.ndarray) -> str:
        """Store a thumbnail durably (once per content); return its digest."""
        self._require_writable()
        pixels = np.ascontiguousarray(pixels, np.uint8)
        digest = thumbnail_digest(pixels)
        target = self.thumb_path(digest)
        if not target.exists():
            try:
                make_folder(target.parent.parent)
                make_folder(target.parent)
            except OSError as exc:
                raise StoreError(f"cannot write to {self.path} ({exc.strerror})") from None
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            write_atomic(target, buffer.getvalue())
        return digest

    def commit(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the new current generation, durably; prune old ones."""
        self._require_writable()
        generation = self.snapshot.generation + 1
        existing = self.generations(self.path)
        if existing:
            generation = max(generation, existing[0][0] + 1)
        write_atomic(self.path / f"gen-{generation:08d}.tcs", encode_generation(snapshot))
        snapshot.generation = generation
        self.snapshot = snapshot
        for _, old in self.generations(self.path)[KEEP_GENERATIONS:]:
            with contextlib.suppress(OSError):
                old.unlink()

    def collect_garbage(self) -> int:
        """Delete thumbnails that no kept generation refers to. Returns how many."""
        self._require_writable()
        keep: set[str] = set()
        for _, file in self.generations(self.path):
            try:
                snapshot = decode_generation(file.read_bytes(), file.name)
                keep.update(e.thumb for e in [*snapshot.examples, *snapshot.limbo])
            except (StoreError, ValueError, KeyError):
                return 0  # be conservative: never delete while any generation is unreadable
        removed = 0
        for thumb in (self.path / "thumbs").glob("*/*.png"):
            if thumb.stem not in keep:
                thumb.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
