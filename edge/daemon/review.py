"""The daemon's side of the review inbox (:mod:`teachcam.edge.teaching.inbox`): watch each prediction, keep the
moments worth a person's look, and label or discard them on request — on the main loop's thread, like every
other change to what the device knows.

Labelling enrolls the item's stored embedding (re-embedded from its picture when the bundle changed since) as an
example whose source is ``inbox:<id>``: it goes through the store's undo and out to the fleet like any other
enrollment, and a daemon killed between the enrollment and the removal of the item's file finds the item labelled
(the store has its source) and drops it when it starts again — never labelled twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.errors import TeachcamError
from teachcam.edge.teaching.inbox import Collector, Inbox, InboxRules

if TYPE_CHECKING:
    from teachcam.edge.daemon.loop import Daemon
    from teachcam.edge.teaching.lessons import Lessons

log = logging.getLogger(__name__)
SOURCE = "inbox:"  # an example labelled from the inbox: its source is SOURCE + the item's id
FOLDER = "inbox"  # in the store's folder


def open_review(d: Daemon) -> Review | None:
    """The daemon's review inbox, or None: turned off, or nothing to teach (a trained head decides)."""
    rules = d.config.inbox
    if not rules.enabled or d.teacher is None or d.head is not None:
        return None
    inbox = Inbox.open(Path(d.config.store) / FOLDER, rules, d.teacher.config.power)
    labelled = {e.source[len(SOURCE):] for e in d.teacher.snapshot.examples if e.source.startswith(SOURCE)}
    if inbox.forget(labelled):
        log.info("inbox: dropped the items labelled just before the daemon stopped")
    return Review(d, inbox, rules)


def reopen(d: Daemon) -> Review | None:
    """After the models (re)loaded: the old inbox written out, the new one (or None) — see :func:`open_review`."""
    if d.review is not None:
        d.review.close()
    return open_review(d)


class Review:
    """The inbox's collector, wired to one daemon: its events, its commands."""

    def __init__(self, daemon: Daemon, inbox: Inbox, rules: InboxRules):
        self.daemon, self.inbox, self.collector = daemon, inbox, Collector(inbox, rules)
        self.kept = self.merged = 0

    def observe(self, embedding: np.ndarray, pixels: np.ndarray, label: str, score: float,
                confidences: dict[str, float]) -> None:
        """One frame the model saw (and its raw prediction). Keeps it when a rule says so; never raises."""
        d = self.daemon
        try:
            kept = self.collector.observe(embedding, pixels, label, score, confidences, d.teacher.config.threshold,
                                          d.embedder.fingerprint, time.time())
        except TeachcamError as exc:  # a full disk must not stop the camera: the moment is not kept
            log.warning("inbox: %s", exc)
            return
        if kept is None:
            return
        what, item = kept
        if what == "merged":
            self.merged += 1
            return
        self.kept += 1
        log.info("inbox: kept %s (%s; guesses %s)", item.id, item.reason, ", ".join(g[0] for g in item.guesses[:2]))
        d.event(m.InboxChanged(count=len(self.inbox), added=item.id, reason=item.reason), log_it=False)

    def label(self, lessons: Lessons, item_id: str, label: str, via: str):
        """Enroll item ``item_id`` into class ``label`` (created if new); the item leaves the inbox. Returns the
        enrollment's Outcome."""
        d = self.daemon
        item = self.inbox.get(item_id)
        outcome = lessons.adopt(label, SOURCE + item.id, item.pixels(), item.embedding, fingerprint=item.fingerprint,
                                embedder=d.embedder, embedding_size=int(np.prod(d.embedder.model.output.shape[1:])),
                                via=via)
        self.inbox.remove(item.id)  # (only once the example is durable: adopt refuses a bad name before any change)
        self.collector.watch.reset()
        d.event(m.InboxChanged(count=len(self.inbox), removed=item.id, label=outcome.label, via=via), log_it=False)
        return outcome

    def discard(self, item_id: str | None, via: str) -> int:
        """Discard one item (or every one, ``item_id`` None): how many went."""
        if item_id is None:
            count = self.inbox.clear()
        else:
            self.inbox.remove(item_id)
            count = 1
        self.daemon.event(m.InboxChanged(count=len(self.inbox), removed=item_id or "*", via=via), log_it=False)
        return count

    def listing(self) -> dict:
        return {"items": self.inbox.listing(), "count": len(self.inbox), "kept": self.kept, "merged": self.merged,
                "size": self.inbox.rules.size}

    def jpeg(self, item_id: str) -> bytes:
        return self.inbox.get(item_id).jpeg

    def close(self) -> None:
        try:
            self.inbox.flush(force=True)
        except TeachcamError as exc:
            log.warning("inbox: %s", exc)


def no_inbox(d: Daemon) -> TeachcamError:
    """The one line when the inbox is asked for but there is none."""
    if d.teacher is None or d.head is not None:
        return TeachcamError("inbox: this daemon decides with a trained head, not by example; there is no inbox")
    return TeachcamError("inbox: turned off in the config ([inbox] enabled = false)")
