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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from teachcam.edge.errors import ClassNameError, StoreError
from teachcam.edge.teaching import spaces
from teachcam.edge.teaching.archive import export_archive
from teachcam.edge.teaching.history import DEPTH, Action, in_limbo, record, trim
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex, Prediction
from teachcam.edge.teaching.names import check_new_class_name
from teachcam.edge.teaching.store import (
    EnrollmentStore,
    Example,
    Snapshot,
    check_class_name,
    count_examples,
    normalize_rows,
    thumbnail_digest,
)

log = logging.getLogger(__name__)
CAP_POLICIES = ("oldest", "redundant")  # which example goes when a class is full


@dataclass(frozen=True)
class Undoing:
    """What an undo did: the action it took back, the examples it removed and the ones it brought back."""

    action: Action
    removed: list[Example]
    restored: list[Example]

    def reply(self, next_undo: dict | None) -> dict:
        """What the socket, MQTT and `teachcam store undo --json` say about it (``next_undo``: Teacher.next_undo)."""
        return {"undone": self.action.text, "action": self.action.id, "removed": len(self.removed),
                "restored": len(self.restored), "undo": next_undo}


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
        self._counts: tuple[Snapshot, dict[str, int]] | None = None  # (the generation they were counted in, counts)

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
        snapshot, cached = self.snapshot, self._counts
        if cached is None or cached[0] is not snapshot:  # keyed by the generation: a reader on another thread that
            cached = (snapshot, count_examples(snapshot))  # counted the one before can never leave it stale
            self._counts = cached
        return dict(cached[1])

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
        return check_new_class_name(canonical)

    def _commit(self, examples: list[Example], embeddings: np.ndarray, classes: list[str],
                fingerprint: str | None = None, *, action: Action | None = None, taken=(),
                history: list[Action] | None = None, limbo: tuple[list[Example], np.ndarray] | None = None) -> None:
        """Write the new generation. ``action``: what a person did (recorded for undo unless a fleet peer did it);
        ``taken``: the (example, embedding row) pairs it took away (they wait in the limbo while the history may
        bring them back); ``history``/``limbo``: replace the history (an undo) or the limbo (re-embedding)."""
        snap = self.snapshot
        kept = list(snap.history) if history is None else list(history)
        if action is not None and action.via != "fleet":
            kept = record(kept, action)
        kept = trim(kept)
        limbo_examples, limbo_rows = limbo if limbo is not None else (snap.limbo, snap.limbo_embeddings)
        if taken:
            limbo_examples = [*limbo_examples, *(e for e, _ in taken)]
            more = np.stack([r for _, r in taken])
            limbo_rows = np.concatenate([limbo_rows, more]) if len(limbo_rows) else more
        wanted, seen, keep = in_limbo(kept), set(), []
        for i, e in enumerate(limbo_examples):
            if e.id in wanted and e.id not in seen:
                seen.add(e.id)
                keep.append(i)
        new = Snapshot(fingerprint or snap.fingerprint, embeddings.shape[1] if embeddings.ndim == 2 else
                       snap.embedding_size, examples, embeddings, classes, history=kept,
                       limbo=[limbo_examples[i] for i in keep],
                       limbo_embeddings=limbo_rows[keep] if keep else None)
        self.store.commit(new)  # raises before anything in memory changes if the disk says no
        self._index = self._counts = None
        if fingerprint and fingerprint != snap.fingerprint:
            self._projection = None

    def add(self, label: str, embedding: np.ndarray, pixels: np.ndarray, *, source: str = "", via: str = "",
            group: str = "", region: str = "", space: str = "") -> Example:
        """Enroll one example; durable on disk when this returns. ``region``: a camera frame's focus region
        (:func:`teachcam.edge.region.region_key`); ``space``: "cpu" for the AI Camera's CPU stand-in."""
        return self.add_many([(label, embedding, pixels, source, space)], via=via, group=group, region=region)[-1]

    def add_many(self, items, *, via: str = "", group: str = "", region: str = "") -> list[Example]:
        """Enroll several ``(label, embedding, pixels, source[, space])`` examples in one durable write: one action for
        undo, which joins the earlier enrollments of the same ``group`` (one hold, one upload)."""
        snap = self.snapshot
        examples, rows, classes = list(snap.examples), [snap.embeddings], list(snap.classes)
        added = []
        for label, embedding, pixels, source, *space in items:
            name = self.resolve_name(label, create=True, classes=classes)
            vector = np.asarray(embedding, np.float32).reshape(-1)
            if snap.embedding_size and vector.size != snap.embedding_size:
                raise StoreError(f"embedding has {vector.size} values; this store holds {snap.embedding_size}")
            if name not in classes:
                classes.append(name)
            example = Example(name, thumbnail_digest(pixels), round(time.time(), 6), source, region, *space)
            examples.append(example)
            rows.append(normalize_rows(vector[None]))
            added.append((example, pixels))
        embeddings = np.concatenate(rows) if rows else snap.embeddings
        examples, embeddings, dropped = apply_cap(examples, embeddings, self.cap, self.cap_policy)
        # Thumbnails are written (durably, before the generation that refers to them) for the examples kept, and
        # for the ones the cap dropped when undo may bring them back; a fleet's catch-up of thousands, capped
        # per class, writes no thumbnail it would drop at once.
        kept = {id(e) for e in examples} | ({id(e) for e, _ in dropped} if via != "fleet" else set())
        for example, pixels in added:
            if id(example) in kept:
                self.store.write_thumbnail(pixels)
        added = [e for e, _ in added]
        action = Action("add", via, group, labels=tuple(dict.fromkeys(e.label for e in added)),
                        added=tuple(e.id for e in added), taken=tuple(e.id for e, _ in dropped),
                        created=tuple(c for c in classes if c not in snap.classes))
        self._commit(examples, embeddings, classes, action=action, taken=dropped)
        return added

    @property
    def history(self) -> list[Action]:
        """What undo can take back, newest last."""
        return list(self.snapshot.history)

    def next_undo(self) -> dict | None:
        """What undo would take back now (its id, its description, who did it, when), or None."""
        return self.snapshot.history[-1].brief() if self.snapshot.history else None

    def undo(self, action_id: str | None = None) -> Undoing | None:
        """Take back one action — the newest, or the one named — as its inverse on the store as it is now (see
        :mod:`teachcam.edge.teaching.history`). None when there is nothing to undo.

        Raises:
            StoreError: ``action_id`` is not in the history (any more); ClassNameError: a rename cannot be taken
                back because another class has the old name now. Nothing changes then.
        """
        snap = self.snapshot
        history = list(snap.history)
        if not history:
            return None
        if action_id is None:
            action = history[-1]
        else:
            action = next((a for a in history if a.id == action_id), None)
            if action is None:
                raise StoreError(f"that change ({action_id}) is not in the undo history any more (it keeps the last "
                                 f"{DEPTH}); nothing was undone")
        history.remove(action)
        examples, rows, classes = list(snap.examples), snap.embeddings, list(snap.classes)
        if action.renamed:
            old, new = action.renamed
            if new not in classes:
                raise StoreError(f"cannot rename {new!r} back to {old!r}: there is no class {new!r} now")
            clash = [c for c in classes if c != new and c.casefold() == old.casefold()]
            if clash:
                raise ClassNameError(f"cannot rename {new!r} back to {old!r}: class {clash[0]!r} exists now")
            examples = [replace(e, label=old) if e.label == new else e for e in examples]
            classes = [old if c == new else c for c in classes]
        added = set(action.added)
        removed = [e for e in examples if e.id in added]
        if removed:
            keep = [i for i, e in enumerate(examples) if e.id not in added]
            examples, rows = [examples[i] for i in keep], rows[keep]
        restored, back = [], []
        if action.taken:
            for name, place in sorted(action.classes, key=lambda c: c[1]):
                if not any(c.casefold() == name.casefold() for c in classes):
                    classes.insert(min(place, len(classes)), name)
            wanted, present = set(action.taken), {e.id for e in examples}
            for j, e in enumerate(snap.limbo):
                if e.id not in wanted or e.id in present:
                    continue
                name = next((c for c in classes if c.casefold() == e.label.casefold()), None)
                if name is None:
                    classes.append(e.label)
                    name = e.label
                restored.append(replace(e, label=name))
                back.append(snap.limbo_embeddings[j])
                present.add(e.id)
        if restored:
            examples, rows = examples + restored, np.concatenate([rows, np.stack(back)])
            order = sorted(range(len(examples)), key=lambda i: examples[i].added)
            examples, rows = [examples[i] for i in order], rows[order]
        for name in action.created:
            if name in classes and not any(e.label == name for e in examples):
                classes.remove(name)
        self._commit(examples, rows, classes, history=history)
        return Undoing(action, removed, restored)

    def remove_examples(self, chosen: Callable[[Example], bool], *, via: str = "") -> list[Example]:
        """Remove every example for which ``chosen(example)`` is true (classes stay). Returns them."""
        snap = self.snapshot
        keep = [i for i, e in enumerate(snap.examples) if not chosen(e)]
        if len(keep) == len(snap.examples):
            return []
        kept = set(keep)
        taken = [(e, snap.embeddings[i]) for i, e in enumerate(snap.examples) if i not in kept]
        action = Action("remove", via, labels=tuple(dict.fromkeys(e.label for e, _ in taken)),
                        taken=tuple(e.id for e, _ in taken))
        self._commit([snap.examples[i] for i in keep], snap.embeddings[keep], list(snap.classes), action=action,
                     taken=taken)
        return [e for e, _ in taken]

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

    def remove_class(self, label: str, *, via: str = "") -> int:
        name = self.resolve_name(label, create=False)
        snap = self.snapshot
        keep = [i for i, e in enumerate(snap.examples) if e.label != name]
        taken = [(e, snap.embeddings[i]) for i, e in enumerate(snap.examples) if e.label == name]
        action = Action("remove_class", via, labels=(name,), taken=tuple(e.id for e, _ in taken),
                        classes=((name, snap.classes.index(name)),))
        self._commit([snap.examples[i] for i in keep], snap.embeddings[keep], [c for c in snap.classes if c != name],
                     action=action, taken=taken)
        self.store.collect_garbage()
        return len(taken)

    def add_class(self, label: str, *, via: str = "") -> str:
        """A class with no examples yet (a web page's new card); returns its canonical name.

        Raises:
            ClassNameError: a bad name, or one that differs from an existing class only in case.
        """
        name = self.resolve_name(label, create=True)
        if name not in self.snapshot.classes:
            snap = self.snapshot
            self._commit(list(snap.examples), snap.embeddings, [*snap.classes, name],
                         action=Action("add_class", via, labels=(name,), created=(name,)))
        return name

    def rename_class(self, old: str, new: str, *, via: str = "") -> str:
        source = self.resolve_name(old, create=False)
        target = check_class_name(new)
        if target.casefold() != source.casefold():
            check_new_class_name(target)
        clash = [c for c in self.snapshot.classes if c != source and c.casefold() == target.casefold()]
        if clash:
            raise ClassNameError(f"cannot rename {source!r} to {target!r}: class {clash[0]!r} exists")
        if target == source:
            return target
        snap = self.snapshot
        examples = [replace(e, label=target) if e.label == source else e for e in snap.examples]
        self._commit(examples, snap.embeddings, [target if c == source else c for c in snap.classes],
                     action=Action("rename", via, labels=(target,), renamed=(source, target)))
        return target

    def clear(self, *, via: str = "") -> int:
        """Forget every example and class (undo brings them back)."""
        snap = self.snapshot
        taken = [(e, snap.embeddings[i]) for i, e in enumerate(snap.examples)]
        action = Action("clear", via, taken=tuple(e.id for e, _ in taken),
                        classes=tuple((c, i) for i, c in enumerate(snap.classes)))
        self._commit([], np.zeros((0, snap.embedding_size), np.float32), [], action=action, taken=taken)
        return len(taken)

    def reembed(self, fingerprint: str, size: int, *, progress: Callable[[], None] | None = None) -> None:
        """Every example (and the limbo's) into ``fingerprint``'s space, from its thumbnail — or from the AI Camera's
        kept embeddings, or as they are when the stand-in made them (the rule: :mod:`.spaces`)."""
        if self.embed is None:
            raise StoreError("re-embedding needs the bundle's embedder")
        snap = self.snapshot
        log.warning("store %s: embeddings were made by another embedder (%s…); re-embedding %d example(s) from "
                    "their thumbnails with %s…", self.store.path, snap.fingerprint[:12], len(snap.examples),
                    fingerprint[:12])
        spaces.keep(self.store.path, snap)  # the sensor's embeddings cannot be made again from thumbnails
        kept, owner = spaces.restore(self.store.path, fingerprint), getattr(self.embed, "__self__", None)
        stand_in = spaces.STAND_IN if getattr(owner, "stand_in", False) else ""
        already = stand_in and snap.fingerprint == getattr(getattr(owner, "cpu", None), "fingerprint", None)

        def moved(examples, rows):
            out, vectors = [], []
            for example, row in zip(examples, rows, strict=True):
                own = example.id in kept  # the sensor's own embedding, kept: it comes back
                out.append(replace(example, space="" if own else stand_in))
                vectors.append(normalize_rows(np.asarray(kept[example.id], np.float32)[None]) if own else row[None]
                               if already else normalize_rows(self.embed(self.store.read_thumbnail(example.thumb))[None]))
                if progress is not None:
                    progress()
            return out, np.concatenate(vectors) if vectors else np.zeros((0, size), np.float32)

        examples, embeddings = moved(snap.examples, snap.embeddings)
        limbo = moved(snap.limbo, snap.limbo_embeddings if snap.limbo else [])
        self._commit(examples, embeddings, list(snap.classes), fingerprint=fingerprint, limbo=limbo)

    # -- exchange with the laptop --------------------------------------------------------------------
    def export(self, archive: Path) -> int:
        """Every example's thumbnail into a zip, one folder per class (see :func:`archive.export_archive`)."""
        return export_archive(self.store, archive)


def apply_cap(examples: list[Example], embeddings: np.ndarray, cap: int, policy: str):
    """The examples within the per-class cap, and the (example, row) pairs it dropped."""
    labels = np.array([e.label for e in examples], dtype=object)
    drop: set[int] = set()
    for name in dict.fromkeys(labels):
        members = np.flatnonzero(labels == name)
        excess = len(members) - cap
        if excess <= 0:
            continue
        if policy == "oldest":
            order = sorted(members, key=lambda i: examples[i].added)
            drop.update(order[:excess])
        else:  # "redundant": drop the examples most similar to the rest of their class
            block = embeddings[members]
            sims = block @ block.T
            np.fill_diagonal(sims, -np.inf)
            redundancy = sims.max(axis=1)
            drop.update(members[np.argsort(-redundancy, kind="stable")[:excess]])
    if not drop:
        return examples, embeddings, []
    keep = [i for i in range(len(examples)) if i not in drop]
    log.info("per-class cap %d reached: dropped %d example(s) (%s)", cap, len(drop), policy)
    return [examples[i] for i in keep], embeddings[keep], [(examples[i], embeddings[i]) for i in sorted(drop)]
