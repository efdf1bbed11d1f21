"""The command router: every command the daemon takes, applied in one place, on the main loop's thread.

Each case is one teaching operation (the rules are :mod:`teachcam.edge.teaching.lessons`'), at most one event for
every port, and the reply. A command that fails becomes an ``Error`` event and a one-line reply; nothing a command
does may stop the camera.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.daemon import focus, memory, review
from teachcam.edge.errors import BundleError, StoreError, TeachcamError
from teachcam.edge.region import region_key
from teachcam.edge.teaching import insight
from teachcam.edge.teaching.lessons import Lessons, Outcome, Sample

if TYPE_CHECKING:
    from teachcam.edge.daemon.loop import Daemon

log = logging.getLogger(__name__)
# Examples from before regions were recorded: these sources were camera frames, taken of the whole picture.
CAMERA_VIAS = frozenset({"button", "hold", "key", "web", "mqtt", "socket"})


class Router:
    """Applies commands to a :class:`Daemon`'s parts (its teacher, embedder, smoother, last frame)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.batches = 0  # one per call of apply_pending: the same-frame rule's frame
        self._lessons: Lessons | None = None  # over the daemon's current teacher (a reload may replace it)

    def apply_pending(self, commands: queue.Queue, current: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Apply the commands queued so far. ``current``: this frame's (embedding, pixels), or None (paused, or no
        new frame): an enrollment then embeds the last frame itself. A command posted meanwhile — a client that
        sends its next enrollment as soon as it has this one's reply — waits for the next call: were it taken now,
        it would share this frame and be skipped as "same frame"."""
        self.batches += 1
        teacher = self.daemon.teacher
        before = teacher.snapshot if teacher is not None else None
        self._apply_each(commands, current)
        if teacher is not None and teacher.snapshot is not before:
            if self.daemon.head is None:
                _ = teacher.index  # built now rather than at the next frame: what building it freed is given back too
            memory.give_back()

    def _apply_each(self, commands: queue.Queue, current: tuple[np.ndarray, np.ndarray] | None) -> None:
        for _ in range(commands.qsize()):
            try:
                command, reply = commands.get_nowait()
            except queue.Empty:
                return
            try:
                result = self.apply(command, current)
            except TeachcamError as exc:  # a full disk or a bad name must not stop the camera
                log.error("%s failed: %s", command.op, exc)
                self.daemon.event(m.Error(message=str(exc), op=command.op), log_it=False)
                result = exc
            except Exception as exc:  # a bug in one command must not stop the camera either
                log.error("%s failed: internal error %s: %s (please report it)", command.op, type(exc).__name__, exc)
                log.debug("internal error applying %r", command, exc_info=True)
                result = TeachcamError(f"{command.op}: internal error ({type(exc).__name__}); the daemon carries on")
            if reply is not None:
                try:
                    reply(result)
                except Exception as exc:  # a client that went away must not stop the camera
                    log.debug("reply to %s failed: %s", command.op, exc)

    def _taught(self, command: m.Command) -> Lessons:
        teacher = self.daemon.teacher
        if teacher is None:
            raise BundleError(f"{command.op}: the bundle is a standalone classifier and cannot be taught by example")
        if self._lessons is None or self._lessons.teacher is not teacher:
            self._lessons = Lessons(teacher)
        return self._lessons

    def _frame(self, current):
        d = self.daemon
        if current is not None:
            return current
        if d.last_frame is None:
            raise StoreError("no camera frame yet: nothing to enroll (is the camera working?)")
        pixels = d.frame_preprocess(d.last_frame)
        if getattr(d.embedder, "stand_in", False) and d.last_embedding is not None:
            return d.last_embedding, pixels  # the AI Camera's embedding of that frame (the CPU's is a stand-in)
        return d.embedder.embed(pixels), pixels

    def _enrolled(self, outcome: Outcome, via: str) -> dict:
        """The acknowledgement of an enrollment (durable when this runs): the event, and the reply."""
        if outcome.example is not None and not outcome.skipped:
            example = outcome.example
            self.daemon.stats.enrolled += 1
            self.daemon.event(m.Enrolled(label=example.label, count=outcome.count, example=example.id,
                                         thumb=example.thumb, via=via))
        return outcome.reply()

    def apply(self, command: m.Command, current) -> dict | None:
        """Apply one command; returns what its reply carries. One case per command type."""
        d, via = self.daemon, command.via
        match command:
            case m.Quit():
                d.stop()
            case m.Status():
                return d.status()
            case m.Pause() | m.Resume():
                d.paused = isinstance(command, m.Pause)
                d.event(m.Paused(paused=d.paused, via=via))
            case m.Reload():
                d.request_reload()
            case m.Snapshot(max_size=max_size):
                if d.last_frame is None:
                    raise TeachcamError("no camera frame yet")
                return {"frame": d.last_frame, "max_size": max_size}
            case m.ListClasses():
                return self._classes()
            case m.Thumbnail(thumb=thumb):
                return {"png": self._taught(command).teacher.store.thumbnail_bytes(thumb)}
            case m.Enroll(label=label, index=index, skip_similar=skip_similar, group=group):
                if label is None:
                    if index is None or not 0 <= index < len(d.config.classes):
                        raise TeachcamError(f"enroll: no class button {index}")
                    label = d.config.classes[index]
                sample = Sample(take=lambda: self._frame(current))
                return self._enrolled(self._taught(command).enroll(label, sample, source=via, batch=self.batches,
                                                                   skip_similar=skip_similar, via=via, group=group,
                                                                   region=region_key(d.region)), via)
            case m.EnrollImage(label=label, pixels=pixels, name=name, unique=unique, group=group):
                sample = Sample(pixels, embed=d.embedder.embed)
                return self._enrolled(self._taught(command).enroll(label, sample, source=name or via, unique=unique,
                                                                   via=via, group=group), via)
            case m.EnrollEmbedding(label=label, source=source):
                outcome = self._taught(command).adopt(
                    label, source, command.pixels, command.embedding, fingerprint=command.fingerprint,
                    embedder=d.embedder, embedding_size=int(np.prod(d.embedder.model.output.shape[1:])), via=via)
                return self._enrolled(outcome, via)
            case m.EnrollEmbeddings(examples=examples):
                outcomes = self._taught(command).adopt_many(
                    examples, embedder=d.embedder, embedding_size=int(np.prod(d.embedder.model.output.shape[1:])),
                    via=via)
                return {"results": [{"error": str(o)} if isinstance(o, Exception) else self._enrolled(o, via)
                                    for o in outcomes]}
            case m.PredictImage(pixels=pixels):
                label, score, confidence, confidences = d.predict(d.embedder.embed(pixels))
                return {"label": label, "score": round(score, 4), "confidence": round(confidence, 4),
                        "confidences": {k: round(v, 4) for k, v in confidences.items()}}
            case m.AddClass(label=label):
                label = self._taught(command).teacher.add_class(label, via=via)
                d.event(m.ClassAdded(label=label, via=via))
                return {"label": label}
            case m.RenameClass(old=old, new=new):
                teacher = self._taught(command).teacher
                old, new = teacher.resolve_name(old, create=False), teacher.rename_class(old, new, via=via)
                d.event(m.Renamed(old=old, new=new, via=via))
                return {"old": old, "new": new}
            case m.RemoveClass(label=label):
                teacher = self._taught(command).teacher
                label = teacher.resolve_name(label, create=False)
                count = teacher.remove_class(label, via=via)
                d.smoother.reset()
                d.event(m.Removed(label=label, count=count, via=via))
                return {"label": label, "count": count}
            case m.Undo(action=action_id):
                teacher = self._taught(command).teacher
                done = teacher.undo(action_id or None)
                if done is None:
                    return {"undone": None, "undo": None}
                d.smoother.reset()
                action = done.action
                d.event(m.Undone(action=action.id, text=action.text, labels=action.labels, removed=len(done.removed),
                                 restored=len(done.restored), sources=tuple(sorted({e.source for e in done.removed
                                                                                     if e.source})), via=via))
                return done.reply(teacher.next_undo())
            case m.SetRegion(region=region, reset=reset):
                return self._set_region(d.config.camera.region if reset else region, reset, via)
            case m.Clear():
                count = self._taught(command).teacher.clear(via=via)
                d.smoother.reset()
                d.event(m.Cleared(count=count, via=via))
                return {"count": count}
            case m.ExampleData(example=example_id):
                teacher = self._taught(command).teacher
                example, embedding = teacher.example(example_id)
                return {"id": example.id, "label": example.label, "thumb": example.thumb, "source": example.source,
                        "added": round(example.added, 3), "fingerprint": teacher.store.fingerprint,
                        "embedding": embedding, "png": teacher.store.thumbnail_bytes(example.thumb)}
            case m.Explain(nearest=count):
                return self._explain(count)
            case m.Notice(text=text, seconds=seconds, link=link):
                d.event(m.NoticeShown(text=text, seconds=seconds, link=link, via=via), log_it=False)  # a secret
                return {"shown": True}
            case m.RemoveExamples(examples=ids, sources=sources):
                ids, sources = set(ids), set(sources)
                gone = self._taught(command).teacher.remove_examples(lambda e: e.id in ids or e.source in sources,
                                                                     via=via)
                if gone:
                    d.event(m.ExamplesRemoved(count=len(gone), labels=tuple(sorted({e.label for e in gone})),
                                              sources=tuple(sorted({e.source for e in gone if e.source})), via=via))
                return {"count": len(gone)}
            case m.Inbox() | m.InboxLabel() | m.InboxDiscard():
                return self._inbox(command)
            case _:
                raise TeachcamError(f"unknown command {command!r}")
        return {}

    def _inbox(self, command: m.Command) -> dict:
        d = self.daemon
        inbox = d.review
        if inbox is None:
            raise review.no_inbox(d)
        match command:
            case m.Inbox(item=item) if item:
                return {"id": item, "jpeg": inbox.jpeg(item)}
            case m.Inbox():
                return inbox.listing()
            case m.InboxLabel(item=item, label=label):
                outcome = inbox.label(self._taught(command), item, label, command.via)
                d.smoother.reset()
                return {"item": item, **self._enrolled(outcome, command.via), "inbox": len(inbox.inbox)}
            case m.InboxDiscard(item=item):
                return {"discarded": inbox.discard(item or None, command.via), "inbox": len(inbox.inbox)}
        return {}

    def _classes(self) -> dict:
        lessons = self._taught(m.ListClasses())
        teacher, view = lessons.teacher, lessons.insight()
        examples: dict[str, list] = {label: [] for label in teacher.classes}
        for example in teacher.snapshot.examples:
            examples.setdefault(example.label, []).append({"id": example.id, "thumb": example.thumb,
                                                           "source": example.source, "added": round(example.added, 3),
                                                           "region": example.region})
        return {"classes": [{"label": label, "count": len(items), "examples": items, "variety": view.variety(label)}
                            for label, items in examples.items()], "undo": teacher.next_undo()}

    def _set_region(self, region, reset: bool, via: str) -> dict:
        """The focus region, at once and kept (``reset``: the config's again); how many camera examples were taken
        with another one — they stay, and the reply and the event say so (keep them, or delete and re-take them)."""
        d = self.daemon
        store = d.config.store
        if reset:
            focus.forget_region(store)
        else:
            focus.save_region(store, region)  # raises before anything changes if the disk says no
        d.set_region(region)
        key = region_key(d.region)
        others = []
        if d.teacher is not None:
            others = [e.id for e in d.teacher.snapshot.examples
                      if (e.region or ("whole" if e.source in CAMERA_VIAS else "")) not in ("", key)]
        d.event(m.RegionChanged(region=d.region, other_region=len(others), via=via))
        # the ids too: a page offers to delete them (to re-take them with this region); undo brings them back
        return {"region": list(d.region) if d.region else None, "other_region": len(others), "other_ids": others}

    def _explain(self, count: int) -> dict:
        """The examples nearest to the current frame; the examples a leave-one-out vote puts in another class."""
        view = self._taught(m.Explain()).insight()
        snap, last = view.snapshot, self.daemon.last_embedding
        nearest = []
        if last is not None and snap.examples:
            sims = view.similarities(last)
            for i in np.argsort(-sims)[: max(1, min(count, 24))]:
                e = snap.examples[int(i)]
                nearest.append({"id": e.id, "label": e.label, "thumb": e.thumb, "similarity": round(float(sims[i]), 4)})
        confused = view.confused()

        def brief(i: int) -> dict:
            e = snap.examples[i]
            return {"id": e.id, "label": e.label, "thumb": e.thumb}

        return {"shown": self.daemon.shown, "nearest": nearest, "pairs": insight.confused_pairs(confused),
                "confused": [{**brief(c["index"]), "looks_like": c["looks_like"], "neighbor": brief(c["neighbor"]),
                              "similarity": c["similarity"]} for c in confused[:50]],
                "examples": len(snap.examples)}
