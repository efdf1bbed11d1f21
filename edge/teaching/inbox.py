"""The review inbox: moments the device was unsure about, kept so that a person can label them later with one tap.

Two parts, both cheap enough for every frame the model sees on a Pi:

* :class:`Watch` — the rules that decide a frame is worth asking about (``reason``):

  - ``unsure``: recognised, but its best similarity is less than ``unsure_margin`` above the unknown threshold;
  - ``tie``: its two best classes' confidences are closer than ``tie_margin``;
  - ``flicker``: the (unsmoothed) answer changed at least ``flips`` times within ``flip_window`` seconds;
  - ``new``: nothing recognised for ``new_after`` seconds on end (and every frame after, while it stays) —
    something new is here.

* :class:`Inbox` — the items, one file each in ``<store>/inbox/`` (written like the store: atomic, fsync'd, the
  store's permissions), so a SIGKILL or a power cut leaves every item either whole or absent. An item keeps its
  embedding (labelling needs no inference), the model-input picture as a JPEG, when it was seen, the device's best
  guesses and why it was kept. Bounded: at most ``size`` items (200 × ~15 KB), at most one new item every
  ``interval`` seconds, and a moment at least ``merge`` similar to an item already kept only counts that item again
  (``seen``). When full, the item seen fewest times (the oldest of those) makes room: a moment that keeps coming
  back is worth more than a one-off.

* :class:`Collector` — the two together, as the daemon runs them on each frame (one look at the inbox per
  ``LOOK_GAP`` at most).

Example usage::

    rules = InboxRules()
    collector = Collector(Inbox.open(Path(store) / "inbox", rules), rules)
    collector.observe(embedding, pixels, p.label, p.score, p.confidences, threshold, fingerprint, now)
    # → ("added", item), ("merged", item) or None
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.edge.errors import StoreError, TeachcamError
from teachcam.edge.teaching.durable import make_folder, write_atomic
from teachcam.edge.teaching.knn import transform
from teachcam.edge.teaching.names import UNKNOWN

log = logging.getLogger(__name__)
MAGIC = b"TCI\x01"  # an item file: magic, header length (u32 LE), JSON header, float32 embedding, JPEG
SUFFIX = ".item"
REASONS = ("unsure", "tie", "flicker", "new")


@dataclass(frozen=True)
class InboxRules:
    """When a moment is kept (the config's ``[inbox]``; see the module docstring)."""

    enabled: bool = True
    size: int = 200
    interval: float = 3.0
    unsure_margin: float = 0.03
    tie_margin: float = 0.2
    flips: int = 3
    flip_window: float = 4.0
    new_after: float = 5.0
    merge: float = 0.93

    def problem(self) -> str:
        """What is wrong with these rules ("" when nothing): the config's error."""
        if not 1 <= self.size <= 2000:
            return "inbox.size must be 1-2000 items"
        if self.interval < 0 or self.flip_window <= 0 or self.new_after <= 0:
            return "inbox.interval must be 0 or more seconds, inbox.flip_window and inbox.new_after more than 0"
        if not 0 <= self.unsure_margin <= 1 or not 0 <= self.tie_margin <= 1 or not 0 < self.merge <= 1:
            return "inbox.unsure_margin and inbox.tie_margin must be 0-1 (0: that rule off), inbox.merge 0-1"
        if self.flips < 2:
            return "inbox.flips must be at least 2"
        return ""


class Watch:
    """The collection rules over the stream of raw predictions (one call per frame the model saw)."""

    def __init__(self, rules: InboxRules):
        self.rules = rules
        self._labels: deque[tuple[float, str]] = deque()  # (time, raw label) changes within flip_window
        self._last: str | None = None
        self._unknown_since: float | None = None
        self.doubt = 0.0  # how likely the last frame's answer is wrong, 0-1 (set with each reason; see observe)

    def reset(self) -> None:
        """Forget the recent past (the classes changed, or the picture did: a new region)."""
        self._labels.clear()
        self._last, self._unknown_since = None, None

    def observe(self, label: str, score: float, confidences: dict[str, float], threshold: float,
                now: float) -> str | None:
        """Why this frame is worth a person's look (a REASONS entry), or None. ``doubt`` then says how much:
        1 for a flicker and for something unrecognised; for a barely recognised answer, how far it is from the
        margin's top (1 at the threshold); for a tie, how close the two are (1: equal)."""
        rules = self.rules
        self.doubt = 1.0
        if label != self._last:
            if self._last is not None:
                self._labels.append((now, label))
            self._last = label
        while self._labels and now - self._labels[0][0] > rules.flip_window:
            self._labels.popleft()
        if label == UNKNOWN:
            if self._unknown_since is None:
                self._unknown_since = now
        else:
            self._unknown_since = None
        if len(self._labels) >= rules.flips:
            self._labels.clear()
            return "flicker"
        if label == UNKNOWN:
            # from new_after on, every frame while it stays: the inbox counts them into one item (``seen``), as the
            # unsure rule's frames are — a long stay ranks as high as a long unsure spell
            if self._unknown_since is not None and now - self._unknown_since >= rules.new_after:
                return "new" if confidences else None  # nothing taught yet: everything is new, nothing to ask
            return None
        if score < threshold + rules.unsure_margin:
            self.doubt = min(1.0, max(0.05, 1.0 - (score - threshold) / rules.unsure_margin))
            return "unsure"
        if len(confidences) >= 2 and rules.tie_margin > 0:
            first, second = sorted(confidences.values(), reverse=True)[:2]
            if first - second < rules.tie_margin:
                self.doubt = max(0.05, 1.0 - (first - second) / rules.tie_margin)
                return "tie"
        return None


@dataclass
class Item:
    """One kept moment."""

    id: str
    reason: str
    time: float  # first seen (seconds since the epoch)
    last: float  # last seen
    seen: int
    score: float  # the best class's similarity
    guesses: list  # [[class, confidence], …] best first, at most 3
    fingerprint: str  # the embedder that made the embedding
    embedding: np.ndarray = field(repr=False)
    jpeg: bytes = field(repr=False)
    doubt: float = 1.0  # how likely the device's answer was wrong (Watch.doubt; the most of the moments merged)

    def as_json(self) -> dict:
        return {"id": self.id, "reason": self.reason, "time": round(self.time, 3), "last": round(self.last, 3),
                "seen": self.seen, "score": round(self.score, 4), "guesses": self.guesses, "doubt": round(self.doubt, 3)}

    def encode(self) -> bytes:
        vector = np.ascontiguousarray(self.embedding, "<f4").tobytes()
        header = json.dumps({**self.as_json(), "fingerprint": self.fingerprint, "embedding_bytes": len(vector),
                             "jpeg_bytes": len(self.jpeg)}).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + vector + self.jpeg

    @classmethod
    def decode(cls, data: bytes) -> Item:
        if data[:4] != MAGIC or len(data) < 8:
            raise ValueError("not an inbox item")
        (size,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8:8 + size])
        start = 8 + size
        vector = np.frombuffer(data[start:start + header["embedding_bytes"]], "<f4").astype(np.float32)
        jpeg = data[start + header["embedding_bytes"]:]
        if len(jpeg) != header["jpeg_bytes"] or not len(vector) or header["reason"] not in REASONS:
            raise ValueError("a truncated inbox item")
        return cls(str(header["id"]), header["reason"], float(header["time"]), float(header["last"]),
                   int(header["seen"]), float(header["score"]), list(header["guesses"]), str(header["fingerprint"]),
                   vector, jpeg, float(header.get("doubt", 1.0)))

    def pixels(self) -> np.ndarray:
        """The model-input picture (decoded from the JPEG)."""
        return np.asarray(Image.open(io.BytesIO(self.jpeg)).convert("RGB"))


def jpeg_of(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class Inbox:
    """The kept moments, on disk in one folder (see the module docstring). Used from one thread (the daemon's loop)."""

    def __init__(self, folder: Path, rules: InboxRules, power: float = 0.5):
        self.folder, self.rules, self.power = folder, rules, power
        self.items: dict[str, Item] = {}
        self._rows: np.ndarray | None = None  # transformed embeddings, in self.items' order (for merging)
        self._dirty: set[str] = set()
        self._last_kept = -1e18
        self._last_flush = 0.0

    @classmethod
    def open(cls, folder: str | Path, rules: InboxRules, power: float = 0.5) -> Inbox:
        """Read the items in ``folder`` (made if missing). Half-written temporary files are removed; an item file
        that cannot be read is renamed ``*.bad`` (kept for a look, never read again) with one warning."""
        inbox = cls(Path(folder), rules, power)
        try:
            make_folder(inbox.folder)
            names = sorted(os.listdir(inbox.folder))
        except OSError as exc:
            raise StoreError(f"cannot open the inbox {folder} ({exc.strerror or exc})") from None
        for name in names:
            path = inbox.folder / name
            if name.startswith(".") and ".tmp-" in name:
                path.unlink(missing_ok=True)
            elif name.endswith(SUFFIX):
                try:
                    item = Item.decode(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.warning("inbox: %s cannot be read (%s); set aside as %s.bad", path, exc, name)
                    os.replace(path, path.with_name(name + ".bad"))
                    continue
                inbox.items[item.id] = item
        return inbox

    def __len__(self) -> int:
        return len(self.items)

    def listing(self) -> list[dict]:
        """Every item, the most useful first (:meth:`ranked`)."""
        return [i.as_json() for i in self.ranked()]

    def _transformed(self) -> np.ndarray:
        """The items' embeddings in the KNN's space, in ``self.items``' order (kept until the items change)."""
        if self._rows is None or len(self._rows) != len(self.items):
            self._rows = transform(np.stack([i.embedding for i in self.items.values()]), self.power)
        return self._rows

    def ranked(self) -> list[Item]:
        """The items in the order worth labelling. Each is worth √seen × doubt: a moment that keeps coming back stands
        for many frames, and an answer likely wrong (something unrecognised, a flicker) is worth more than one barely
        right. First the worthiest, then each time the one whose worth times its distance (1 − cosine) to the nearest
        item already listed is largest: the first ten are ten different situations, not ten views of one."""
        items = list(self.items.values())
        if len(items) < 2:
            return items
        rows = self._transformed()
        weight = np.sqrt([i.seen for i in items]) * np.array([i.doubt for i in items])
        order = [int(np.argmax(weight))]
        nearest = rows @ rows[order[0]]
        left = np.ones(len(items), bool)
        left[order[0]] = False
        while left.any():
            score = np.where(left, weight * (1.0 - nearest), -np.inf)
            pick = int(np.argmax(score))
            order.append(pick)
            left[pick] = False
            nearest = np.maximum(nearest, rows @ rows[pick])
        return [items[i] for i in order]

    def get(self, item_id: str) -> Item:
        item = self.items.get(item_id)
        if item is None:
            raise TeachcamError(f"no inbox item {item_id!r} (labelled or discarded already? `teachcam inbox list`)")
        return item

    def _similar(self, vector: np.ndarray, fingerprint: str) -> Item | None:
        if not self.items:
            return None
        sims = self._transformed() @ vector
        best = int(np.argmax(sims))
        item = list(self.items.values())[best]
        return item if sims[best] >= self.rules.merge and item.fingerprint == fingerprint else None

    def keep(self, reason: str, embedding: np.ndarray, pixels: np.ndarray, guesses: list, score: float,
             fingerprint: str, now: float | None = None, doubt: float = 1.0) -> tuple[str, Item] | None:
        """A moment the rules picked: ("merged", item) when it is like one already kept, ("added", item) when it is
        new and the rate allows it, else None. An added item is durable when this returns."""
        now = time.time() if now is None else now
        vector = transform(np.asarray(embedding, np.float32), self.power)
        similar = self._similar(vector, fingerprint)
        if similar is not None:
            similar.seen += 1
            similar.last, similar.doubt = now, max(similar.doubt, doubt)
            self._dirty.add(similar.id)
            self.flush(now)
            return "merged", similar
        if now - self._last_kept < self.rules.interval:
            return None
        item = Item(f"{int(now * 1000):x}{secrets.token_hex(2)}", reason, now, now, 1, float(score),
                    [[str(label), round(float(p), 4)] for label, p in guesses[:3]], fingerprint,
                    np.asarray(embedding, np.float32).copy(), jpeg_of(pixels), float(doubt))
        while len(self.items) >= self.rules.size:
            self.remove(min(self.items.values(), key=lambda i: (i.seen, i.last)).id)
        self._write(item)
        self.items[item.id] = item
        self._rows = None
        self._last_kept = now
        return "added", item

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Write the items merged into since the last write (at most once every ``interval`` seconds)."""
        now = time.time() if now is None else now
        if self._dirty and (force or now - self._last_flush >= self.rules.interval):
            for item_id in list(self._dirty):
                if item_id in self.items:
                    self._write(self.items[item_id])
            self._dirty.clear()
            self._last_flush = now

    def _write(self, item: Item) -> None:
        write_atomic(self.folder / f"{item.id}{SUFFIX}", item.encode())

    def remove(self, item_id: str) -> Item:
        """Take an item out (labelled or discarded): gone from disk when this returns."""
        item = self.get(item_id)
        try:
            (self.folder / f"{item_id}{SUFFIX}").unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove the inbox item {item_id} ({exc.strerror})") from None
        del self.items[item_id]
        self._dirty.discard(item_id)
        self._rows = None
        return item

    def clear(self) -> int:
        count = len(self.items)
        for item_id in list(self.items):
            self.remove(item_id)
        return count

    def forget(self, labelled: set[str]) -> int:
        """Remove the items whose ids are in ``labelled`` (the store already holds them: a labelling that ended
        before its item's file was removed). Returns how many."""
        gone = [i for i in self.items if i in labelled]
        for item_id in gone:
            self.remove(item_id)
        return len(gone)


LOOK_GAP = 0.5  # s: a rule that holds frame after frame costs one look at the inbox (its similarities) per half second


class Collector:
    """The rules over one inbox: what the daemon runs for each frame the model saw (and a benchmark runs on its own
    clock)."""

    def __init__(self, inbox: Inbox, rules: InboxRules):
        self.inbox, self.watch = inbox, Watch(rules)
        self._next_look = 0.0

    def observe(self, embedding: np.ndarray, pixels: np.ndarray, label: str, score: float,
                confidences: dict[str, float], threshold: float, fingerprint: str,
                now: float) -> tuple[str, Item] | None:
        """This frame and its raw prediction: what :meth:`Inbox.keep` did with it, or None (no rule holds, or the
        inbox was looked at less than LOOK_GAP ago)."""
        reason = self.watch.observe(label, score, confidences, threshold, now)
        if reason is None:
            self.inbox.flush(now)
            return None
        if now < self._next_look:
            return None
        self._next_look = now + LOOK_GAP
        guesses = sorted(confidences.items(), key=lambda kv: -kv[1])
        return self.inbox.keep(reason, embedding, pixels, guesses, score, fingerprint, now, self.watch.doubt)
