"""Teach by example: enroll embeddings into classes, predict with KNN, keep it all in the store.

The library API the daemon and the CLI share. Enrolling takes the embedding the caller
already computed for the current frame (no second inference) plus the model-input
pixels, which are kept as the example's thumbnail.

Example usage::

    teacher = Teacher.open("store", embedder)           # re-embeds if the embedder changed
    teacher.add("mug", embedding, pixels)                # durable when it returns
    teacher.predict(embedding).label                      # "mug", another class, or "unknown"
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from teachcam.edge.errors import ClassNameError, StoreError
from teachcam.edge.teaching.archive import export_archive
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex, Prediction
from teachcam.edge.teaching.store import EnrollmentStore, Example, Snapshot, check_class_name, normalize_rows

log = logging.getLogger(__name__)
CAP_POLICIES = ("oldest", "redundant")  # which example goes when a class is full


class Teacher:
    """Enrolled examples + KNN index + durable store."""

    def __init__(self, store: EnrollmentStore, *, config: KNNConfig | None = None, cap: int = 200,
                 cap_policy: str = "oldest", embed: Callable[[np.ndarray], np.ndarray] | None = None):
        if cap < 1:
            raise ValueError("the per-class cap must be at least 1")
        if cap_policy not in CAP_POLICIES:
            raise ValueError(f"cap policy must be one of {', '.join(CAP_POLICIES)}")
        self.store = store
        self.config = config or KNNConfig()
        self.cap = cap
        self.cap_policy = cap_policy
        self.embed = embed
        self._index: KNNIndex | None = None
        self._projection: tuple[np.ndarray, int] | None = None
        self._counts: dict[str, int] | None = None

    @classmethod
    def open(cls, path: str | Path, embedder=None, *, writable: bool = True, progress: Callable[[], None] | None = None,
             **options) -> Teacher:
        """Open the store at ``path`` for ``embedder`` (an :class:`edge.models.Embedder`, or None
        for operations that need no embeddings: list, rename, remove, clear, export).

        When the store's embeddings came from another embedder, every example is re-embedded
        from its thumbnail before anything else happens; old and new embeddings never mix.
        ``progress`` is called after each re-embedded example (the daemon feeds systemd's watchdog with it).
        """
        fingerprint = embedder.fingerprint if embedder is not None else ""
        size = embedder.model.output.shape[-1] if embedder is not None else 0
        store = EnrollmentStore.open(path, fingerprint=fingerprint, embedding_size=size, writable=writable)
        teacher = cls(store, embed=embedder.embed if embedder is not None else None, **options)
        if embedder is not None and store.snapshot.examples and store.fingerprint != fingerprint:
            if not writable:
                raise StoreError(f"the store {path} was made with another embedder; open it writable to re-embed")
            teacher.reembed(fingerprint, size, progress=progress)
        elif embedder is not None and not store.snapshot.examples:
            store.snapshot.fingerprint, store.snapshot.embedding_size = fingerprint, size
            if store.snapshot.embeddings.shape[1] != size:
                store.snapshot.embeddings = np.zeros((0, size), np.float32)
        return teacher

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -------------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self.store.snapshot

    @property
    def classes(self) -> list[str]:
        return list(self.snapshot.classes)

    def counts(self) -> dict[str, int]:
        """Examples per class (cached until the next change: the daemon asks every frame)."""
        if self._counts is None:
            self._counts = self.store.counts()
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self.snapshot.examples)

    @property
    def index(self) -> KNNIndex:
        if self._index is None:
            snap = self.snapshot
            # Reuse the coarse projection while the store has less than doubled since it was fitted.
            reuse = self._projection if self._projection and len(snap.examples) < 2 * self._projection[1] else None
            self._index = KNNIndex(snap.embeddings, [e.label for e in snap.examples], snap.classes, self.config.power,
                                   projection=reuse[0] if reuse else None, ridge_alpha=self.config.ridge_alpha)
            if self._index.projection is not None and reuse is None:
                self._projection = (self._index.projection, len(snap.examples))
        return self._index

    def predict(self, embedding: np.ndarray) -> Prediction:
        return self.index.predict(embedding, self.config)

    # -- changing ------------------------------------------------------------------------------------
    def resolve_name(self, name: str, *, create: bool, classes: list[str] | None = None) -> str:
        """The class a name refers to; names differing only in case clash (one clear error)."""
        canonical = check_class_name(name)
        for existing in self.snapshot.classes if classes is None else classes:
            if existing == canonical:
                return existing
            if existing.casefold() == canonical.casefold():
                raise ClassNameError(f"class {canonical!r} differs from the existing class {existing!r} only in case; "
                                     f"use {existing!r}")
        if not create:
            raise ClassNameError(f"no class {canonical!r} in the store (classes: {', '.join(self.classes) or 'none'})")
        return canonical

    def _commit(self, examples: list[Example], embeddings: np.ndarray, classes: list[str],
                fingerprint: str | None = None) -> None:
        snap = self.snapshot
        new = Snapshot(fingerprint or snap.fingerprint, embeddings.shape[1] if embeddings.ndim == 2 else
                       snap.embedding_size, examples, embeddings, classes)
        self.store.commit(new)  # raises before anything in memory changes if the disk says no
        self._index = self._counts = None
        if fingerprint and fingerprint != snap.fingerprint:
            self._projection = None

    def add(self, label: str, embedding: np.ndarray, pixels: np.ndarray, *, source: str = "") -> Example:
        """Enroll one example; durable on disk when this returns."""
        return self.add_many([(label, embedding, pixels, source)])[-1]

    def add_many(self, items) -> list[Example]:
        """Enroll several ``(label, embedding, pixels, source)`` examples in one durable write."""
        snap = self.snapshot
        examples, rows, classes = list(snap.examples), [snap.embeddings], list(snap.classes)
        added = []
        for label, embedding, pixels, source in items:
            name = self.resolve_name(label, create=True, classes=classes)
            vector = np.asarray(embedding, np.float32).reshape(-1)
            if snap.embedding_size and vector.size != snap.embedding_size:
                raise StoreError(f"embedding has {vector.size} values; this store holds {snap.embedding_size}")
            if name not in classes:
                classes.append(name)
            example = Example(name, self.store.write_thumbnail(pixels), time.time(), source)
            examples.append(example)
            rows.append(normalize_rows(vector[None]))
            added.append(example)
        embeddings = np.concatenate(rows) if rows else snap.embeddings
        examples, embeddings = self._apply_cap(examples, embeddings)
        self._commit(examples, embeddings, classes)
        return added

    def _apply_cap(self, examples: list[Example], embeddings: np.ndarray):
        labels = np.array([e.label for e in examples], dtype=object)
        drop: set[int] = set()
        for name in dict.fromkeys(labels):
            members = np.flatnonzero(labels == name)
            excess = len(members) - self.cap
            if excess <= 0:
                continue
            if self.cap_policy == "oldest":
                order = sorted(members, key=lambda i: examples[i].added)
                drop.update(order[:excess])
            else:  # "redundant": drop the examples most similar to the rest of their class
                block = embeddings[members]
                sims = block @ block.T
                np.fill_diagonal(sims, -np.inf)
                redundancy = sims.max(axis=1)
                drop.update(members[np.argsort(-redundancy, kind="stable")[:excess]])
        if not drop:
            return examples, embeddings
        keep = [i for i in range(len(examples)) if i not in drop]
        log.info("per-class cap %d reached: dropped %d example(s) (%s)", self.cap, len(drop), self.cap_policy)
        return [examples[i] for i in keep], embeddings[keep]

    def undo_last(self) -> Example | None:
        """Remove the most recently enrolled example. Returns it, or None when the store is empty."""
        snap = self.snapshot
        if not snap.examples:
            return None
        last = max(range(len(snap.examples)), key=lambda i: snap.examples[i].added)
        keep = [i for i in range(len(snap.examples)) if i != last]
        self._commit([snap.examples[i] for i in keep], snap.embeddings[keep], list(snap.classes))
        return snap.examples[last]

    def remove_examples(self, chosen: Callable[[Example], bool]) -> list[Example]:
        """Remove every example for which ``chosen(example)`` is true (classes stay). Returns them."""
        snap = self.snapshot
        keep = [i for i, e in enumerate(snap.examples) if not chosen(e)]
        if len(keep) == len(snap.examples):
            return []
        gone = [e for i, e in enumerate(snap.examples) if i not in set(keep)]
        self._commit([snap.examples[i] for i in keep], snap.embeddings[keep], list(snap.classes))
        return gone

    def example(self, example_id: str) -> tuple[Example, np.ndarray]:
        """One example and its stored (normalized) embedding, by id.

        Raises:
            StoreError: no such example.
        """
        snap = self.snapshot
        for i, e in enumerate(snap.examples):
            if e.id == example_id:
                return e, snap.embeddings[i]
        raise StoreError(f"no example {example_id!r} in the store")

    def remove_class(self, label: str) -> int:
        name = self.resolve_name(label, create=False)
        snap = self.snapshot
        keep = [i for i, e in enumerate(snap.examples) if e.label != name]
        removed = len(snap.examples) - len(keep)
        self._commit([snap.examples[i] for i in keep], snap.embeddings[keep], [c for c in snap.classes if c != name])
        self.store.collect_garbage()
        return removed

    def add_class(self, label: str) -> str:
        """A class with no examples yet (a web page's new card); returns its canonical name.

        Raises:
            ClassNameError: a bad name, or one that differs from an existing class only in case.
        """
        name = self.resolve_name(label, create=True)
        if name not in self.snapshot.classes:
            snap = self.snapshot
            self._commit(list(snap.examples), snap.embeddings, [*snap.classes, name])
        return name

    def rename_class(self, old: str, new: str) -> str:
        source = self.resolve_name(old, create=False)
        target = check_class_name(new)
        clash = [c for c in self.snapshot.classes if c != source and c.casefold() == target.casefold()]
        if clash:
            raise ClassNameError(f"cannot rename {source!r} to {target!r}: class {clash[0]!r} exists")
        snap = self.snapshot
        examples = [replace(e, label=target) if e.label == source else e for e in snap.examples]
        self._commit(examples, snap.embeddings, [target if c == source else c for c in snap.classes])
        return target

    def clear(self) -> int:
        """Forget every example and class. The previous generation stays on disk until the next change."""
        count = len(self.snapshot.examples)
        self._commit([], np.zeros((0, self.snapshot.embedding_size), np.float32), [])
        return count

    def reembed(self, fingerprint: str, size: int, *, progress: Callable[[], None] | None = None) -> None:
        if self.embed is None:
            raise StoreError("re-embedding needs the bundle's embedder")
        snap = self.snapshot
        log.warning("store %s: embeddings were made by another embedder (%s…); re-embedding %d example(s) from "
                    "their thumbnails with %s…", self.store.path, snap.fingerprint[:12], len(snap.examples),
                    fingerprint[:12])
        rows = []
        for example in snap.examples:
            rows.append(normalize_rows(self.embed(self.store.read_thumbnail(example.thumb))[None]))
            if progress is not None:
                progress()
        embeddings = np.concatenate(rows) if rows else np.zeros((0, size), np.float32)
        self._commit(list(snap.examples), embeddings, list(snap.classes), fingerprint=fingerprint)

    # -- exchange with the laptop --------------------------------------------------------------------
    def export(self, archive: Path) -> int:
        """Every example's thumbnail into a zip, one folder per class (see :func:`archive.export_archive`)."""
        return export_archive(self.store, archive)
