"""The rules of teaching, in one place for the daemon and for the CLI without a daemon.

A :class:`Teacher` stores what it is given; :class:`Lessons` decides what to give it:

* **same frame** — within one batch of commands (one camera frame), a class takes that frame once: two presses
  that land on the same frame do not add two copies of it;
* **similar** — ``skip_similar`` > 0 (hold-to-add): a frame at least that similar, in KNN space, to an example the
  class already has is skipped, so holding still on one object does not fill the class with copies;
* **duplicate** — ``unique``: the very picture the class already holds (same thumbnail digest) is skipped;
* **adopting a fleet example** — an example taught on another Pi, named by its ``source``: the same source again
  is skipped (or moved, when it was relabelled there); its embedding is used as is only when it came from this
  embedder (same fingerprint and size), otherwise it is re-embedded from its picture.

Example usage::

    lessons = Lessons(teacher)
    outcome = lessons.enroll("mug", Sample(pixels, embed=embedder.embed), source="cli", unique=True)
    outcome.skipped or outcome.example.id
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.errors import TeachcamError
from teachcam.edge.teaching import spaces
from teachcam.edge.teaching.insight import StoreInsight
from teachcam.edge.teaching.store import Example, thumbnail_digest
from teachcam.edge.teaching.teacher import Teacher


class Sample:
    """What an example is made of — the model-input pixels and their embedding — each taken only when a rule
    lets it through (embedding costs an inference; the camera's frame may not exist yet). Either ``pixels`` with
    ``embed`` (an upload, a file), or ``take`` that returns (embedding, pixels) (the camera's frame)."""

    def __init__(self, pixels: np.ndarray | None = None, *, embed: Callable[[np.ndarray], np.ndarray] | None = None,
                 take: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None):
        self._pixels, self._embedding, self._embed, self._take = pixels, None, embed, take
        self.space = spaces.space_of(embed) if take is None else ""  # the camera's frame: the store's own embedder

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._embedding, self._pixels = self._take()
        return self._pixels

    @property
    def embedding(self) -> np.ndarray:
        if self._embedding is None:
            if self._pixels is None:  # the camera's frame: both at once
                self._embedding, self._pixels = self._take()
            else:
                self._embedding = self._embed(self._pixels)
        return self._embedding


@dataclass(frozen=True)
class Outcome:
    """What an enrollment did: the example it added, or why it added nothing (``skipped``, messages.SKIPPED_*)."""

    label: str
    count: int
    example: Example | None = None
    skipped: str = ""
    similarity: float | None = None
    reembedded: bool | None = None

    def reply(self) -> dict:
        out: dict = {"label": self.label, "count": self.count}
        if self.example is not None:
            out.update(example=self.example.id, thumb=self.example.thumb)
        if self.skipped:
            out["skipped"] = self.skipped
        if self.similarity is not None:
            out["similarity"] = self.similarity
        if self.reembedded is not None:
            out["reembedded"] = self.reembedded
        return out


class Lessons:
    """The teaching rules over one :class:`Teacher` (see the module docstring)."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self._insight: StoreInsight | None = None
        self._batch: object = None
        self._taken: set[str] = set()

    def insight(self) -> StoreInsight:
        """What the current store generation says (nearest examples, varieties, confusion), derived once."""
        teacher = self.teacher
        if self._insight is None or self._insight.snapshot is not teacher.snapshot:
            self._insight = StoreInsight(teacher.snapshot, teacher.config.power)
        return self._insight

    def _count(self, label: str) -> int:
        return self.teacher.counts().get(label, 0)

    def enroll(self, label: str, sample: Sample, *, source: str, batch: object = None, skip_similar: float = 0.0,
               unique: bool = False, via: str = "", group: str = "", region: str = "") -> Outcome:
        """Add ``sample`` to class ``label`` (created if new) unless a rule says no. ``batch``: the frame the
        command is applied with (the same-frame rule; None: every call is its own). ``via`` and ``group``: who
        asked, and the hold or upload it belongs to (one action for undo)."""
        teacher = self.teacher
        label = teacher.resolve_name(label, create=True)
        if batch is not None:
            if batch != self._batch:
                self._batch, self._taken = batch, set()
            if label in self._taken:
                return Outcome(label, self._count(label), skipped=m.SKIPPED_SAME_FRAME)
        if unique:
            digest = thumbnail_digest(sample.pixels)
            if any(e.label == label and e.thumb == digest for e in teacher.snapshot.examples):
                return Outcome(label, self._count(label), skipped=m.SKIPPED_DUPLICATE)
        if skip_similar > 0:
            view = self.insight()
            rows = view.rows(label)
            sims = view.similarities(sample.embedding, rows)
            if len(sims) and float(sims.max()) >= skip_similar:
                return Outcome(label, len(rows), skipped=m.SKIPPED_SIMILAR, similarity=round(float(sims.max()), 4))
        example = teacher.add(label, sample.embedding, sample.pixels, source=source, via=via or source, group=group,
                              region=region, space=sample.space)
        if batch is not None:
            self._taken.add(label)
        return Outcome(example.label, self._count(example.label), example)

    def enroll_many(self, items: list[tuple[str, Sample, str]], *, unique: bool = False, via: str = "cli") -> list[Outcome]:
        """``(label, sample, source)`` items in one store generation (the CLI's files), by the rules a daemon applies
        to them one at a time: with ``unique``, a picture its class holds — or got earlier in this call — is
        skipped. Every name is checked before anything is embedded."""
        teacher = self.teacher
        labels = [teacher.resolve_name(label, create=True) for label, _, _ in items]
        seen = {(e.label, e.thumb) for e in teacher.snapshot.examples} if unique else set()
        chosen, skipped = [], []
        for label, (_, sample, source) in zip(labels, items, strict=True):
            if unique:
                key = (label, thumbnail_digest(sample.pixels))
                if key in seen:
                    skipped.append(True)
                    continue
                seen.add(key)
            chosen.append((label, sample.embedding, sample.pixels, source, sample.space))
            skipped.append(False)
        added = iter(teacher.add_many(chosen, via=via) if chosen else [])
        counts = teacher.counts()
        return [Outcome(label, counts.get(label, 0), skipped=m.SKIPPED_DUPLICATE) if skip
                else Outcome(label, counts.get(label, 0), next(added)) for label, skip in zip(labels, skipped, strict=True)]

    def adopt(self, label: str, source: str, pixels: np.ndarray | None, embedding: np.ndarray | None, *,
              fingerprint: str, embedder, embedding_size: int, via: str = "fleet") -> Outcome:
        """An example taught elsewhere (a fleet peer), named by ``source``: its ``embedding`` is used as is when it
        came from ``embedder`` (same fingerprint and size), else its ``pixels`` are embedded."""
        teacher = self.teacher
        if not source:
            raise TeachcamError("enroll_embedding: source (who taught it) is required")
        label = teacher.resolve_name(label, create=True)
        known = [e for e in teacher.snapshot.examples if e.source == source]
        if known and all(e.label == label for e in known):
            return Outcome(label, self._count(label), known[0], skipped=m.SKIPPED_KNOWN)
        if known:  # relabelled where it was taught: move it
            teacher.remove_examples(lambda e: e.source == source, via=via)
        size = teacher.snapshot.embedding_size or embedding_size
        reuse = embedding is not None and fingerprint == embedder.fingerprint and embedding.size == size
        if not reuse:
            embedding = embedder.embed(pixels)
        example = teacher.add(label, embedding, pixels, source=source, via=via,
                              space="" if reuse else spaces.space_of(embedder.embed))
        return Outcome(example.label, self._count(example.label), example, reembedded=not reuse)

    def adopt_many(self, items, *, embedder, embedding_size: int, via: str = "fleet") -> list[Outcome | TeachcamError]:
        """:meth:`adopt` for many examples (dicts: label, source, fingerprint, embedding, pixels — or error) in one
        durable write: what each one came to, in order (an Outcome, or the error that refused it)."""
        teacher = self.teacher
        results: list[Outcome | TeachcamError | None] = [None] * len(items)
        held: dict[str, str] = {}  # source → its label in the store
        for e in teacher.snapshot.examples:
            if e.source:
                held.setdefault(e.source, e.label)
        known = {e.source: e for e in teacher.snapshot.examples if e.source}
        size = teacher.snapshot.embedding_size or embedding_size
        classes, moved, batch = list(teacher.snapshot.classes), set(), []
        for i, item in enumerate(items):
            try:
                if item.get("error"):
                    raise TeachcamError(item["error"])
                source = item["source"]
                label = teacher.resolve_name(item["label"], create=True, classes=classes)
                if held.get(source) == label:  # already here (or twice in this batch)
                    results[i] = Outcome(label, 0, known.get(source), skipped=m.SKIPPED_KNOWN)
                    continue
                if source in known:
                    moved.add(source)  # relabelled where it was taught: moved
                embedding = item.get("embedding")
                reuse = embedding is not None and item.get("fingerprint") == embedder.fingerprint and embedding.size == size
                if label not in classes:
                    classes.append(label)
                batch.append((i, label, embedding if reuse else embedder.embed(item["pixels"]), item["pixels"], source,
                              not reuse))
                held[source] = label
            except TeachcamError as exc:
                results[i] = exc
        if moved:
            teacher.remove_examples(lambda e: e.source in moved, via=via)
        if batch:
            stand_in = spaces.space_of(embedder.embed)
            added = teacher.add_many([(label, vector, pixels, source, stand_in if reembedded else "")
                                      for _, label, vector, pixels, source, reembedded in batch], via=via)
            counts = teacher.counts()
            for (i, *_, reembedded), example in zip(batch, added, strict=True):
                results[i] = Outcome(example.label, counts.get(example.label, 0), example, reembedded=reembedded)
        return results
