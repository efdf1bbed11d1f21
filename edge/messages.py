"""The one vocabulary between the daemon and everything that talks to it: commands in, events out.

Buttons, keys, the control socket (and through it the CLI, the web page and MQTT) all post the
same typed :class:`Command` objects to the daemon's queue; the main loop is the only code that
applies them (it owns the interpreter and the store writer). Everything the daemon has to say
is an :class:`Event`; every port receives the same events. On the control socket both travel
as JSON objects: a command as ``{"op": "<op>", ...fields}``, an event as ``{"event": "<kind>", ...}``.

Example usage::

    daemon.post(Enroll(label="mug", via="cli"), reply=print)   # reply: the result dict, or an error
    event = Enrolled(label="mug", count=3, example=41, thumb="9f2c…", via="cli")
    event.as_json()   # {"event": "enrolled", "label": "mug", "count": 3, ...}
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from teachcam.edge.wire import Wire, wire  # noqa: F401 (Wire: protocol.py reads each field's)

PROTOCOL_VERSION = 1

# Why an enrollment added nothing (the reply's ``skipped``): the frame already taught a moment ago, a near-copy
# of an example the class has (``skip_similar``), the very picture the class already holds (``unique``),
# and (a fleet example) one this daemon already has from the same source.
SKIPPED_SAME_FRAME, SKIPPED_SIMILAR, SKIPPED_DUPLICATE, SKIPPED_KNOWN = "same frame", "similar", "duplicate", "known"


# -- commands: what someone asks for -----------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """Base of every command. ``via`` says who asked (button, hold, key, cli, web, mqtt, socket)."""

    op: ClassVar[str] = ""
    via: str = wire("button", cut=16)

    def check(self) -> str:
        """What is missing or inconsistent beyond each field's own rules ("" when nothing): the socket's error."""
        return ""


@dataclass(frozen=True)
class Enroll(Command):
    """Add the current camera frame to a class: by name, or by button index (the config's classes)."""

    op: ClassVar[str] = "enroll"
    label: str | None = wire(None)
    index: int | None = wire(None, "int")
    # > 0: skip the frame when it is at least this similar (KNN space) to an example the class already has
    # (hold-to-add on the web page: holding still on one object does not fill the class with copies)
    skip_similar: float = wire(0.0, "number", low=0, high=1, hint="a similarity from 0 (off) to 1")
    group: str = wire("", cut=64)  # enrollments of one hold (the page makes up its id): one action for undo

    def check(self) -> str:
        return "label (a class name) is required" if self.label is None and self.index is None else ""


@dataclass(frozen=True)
class EnrollImage(Command):
    """Add an uploaded image (already decoded and preprocessed to the model's input) to a class."""

    op: ClassVar[str] = "enroll_image"
    label: str = wire("", required=True)
    pixels: np.ndarray | None = wire(None, "image", required=True)
    name: str = wire("")
    unique: bool = wire(False, "bool")  # skip it when the class already has this very picture (store import)
    group: str = wire("", cut=64)  # the images of one upload: one action for undo


@dataclass(frozen=True)
class PredictImage(Command):
    """What the daemon's model says about an uploaded image (nothing is enrolled)."""

    op: ClassVar[str] = "predict_image"
    pixels: np.ndarray | None = wire(None, "image", required=True)
    name: str = wire("")


@dataclass(frozen=True)
class Notice(Command):
    """Show a short text on the device's own outputs (the OLED, the terminal) for ``seconds``: e.g. the web
    page's pairing link, readable only by someone standing at the Pi."""

    op: ClassVar[str] = "notice"
    text: str = wire("", required=True)
    seconds: float = wire(60.0, "number", low=1, high=600)
    link: str = wire("")  # a URL the attached screen also shows as a QR code (the pairing link: scan it to log in)


@dataclass(frozen=True)
class Explain(Command):
    """Why it thinks so: the examples nearest to the current frame, and which classes' examples are confused."""

    op: ClassVar[str] = "explain"
    nearest: int = wire(6, "int", low=1, high=24)


@dataclass(frozen=True)
class ExampleData(Command):
    """One enrolled example in full — label, source, stored embedding, thumbnail: what a fleet bridge shares."""

    op: ClassVar[str] = "example"
    example: str = wire("", required=True)


@dataclass(frozen=True)
class EnrollEmbedding(Command):
    """Add an example taught elsewhere (a fleet peer). Its embedding is used as is when ``fingerprint`` is this
    daemon's embedder's; otherwise the example is re-embedded from its picture (``pixels``, the model input).
    ``source`` names it: the same source again updates its label instead of adding a copy."""

    op: ClassVar[str] = "enroll_embedding"
    label: str = wire("", required=True)
    embedding: np.ndarray | None = wire(None, "embedding")
    fingerprint: str = wire("")
    pixels: np.ndarray | None = wire(None, "image", exact=True)  # a thumbnail: the model input already
    source: str = wire("", required=True)


@dataclass(frozen=True)
class EnrollEmbeddings(Command):
    """Several examples taught elsewhere at once (a fleet's catch-up): each as :class:`EnrollEmbedding` says, all in
    one durable write. ``examples``: dicts with ``label``, ``source``, ``fingerprint``, ``embedding`` (or None) and
    ``pixels`` (or ``error``: the one line why its picture could not be read)."""

    op: ClassVar[str] = "enroll_embeddings"
    examples: tuple = wire((), "examples", required=True)


@dataclass(frozen=True)
class RemoveExamples(Command):
    """Remove examples by id and/or by source (a fleet peer withdrew them); classes stay."""

    op: ClassVar[str] = "remove_examples"
    examples: tuple = wire((), "strings")
    sources: tuple = wire((), "strings")


@dataclass(frozen=True)
class AddClass(Command):
    op: ClassVar[str] = "add_class"
    label: str = wire("", required=True)


@dataclass(frozen=True)
class RenameClass(Command):
    op: ClassVar[str] = "rename_class"
    old: str = wire("", required=True)
    new: str = wire("", required=True)


@dataclass(frozen=True)
class RemoveClass(Command):
    op: ClassVar[str] = "remove_class"
    label: str = wire("", required=True)


@dataclass(frozen=True)
class Undo(Command):
    """Take back the last action done here (an enrollment, a hold's or an upload's batch, a new class, a rename,
    a deletion, a clear) — or exactly the one named by ``action`` (an id from ``status``' or ``classes``' ``undo``:
    what a page offered), whatever happened since. Changes made meanwhile stay."""

    op: ClassVar[str] = "undo"
    action: str = wire("")


@dataclass(frozen=True)
class SetRegion(Command):
    """The focus region: the model sees only this part of the picture — ``region`` x0,y0,x1,y1, fractions of the
    whole frame (null or [] for the whole frame); ``reset``: back to the config's ``[camera] region``. Applied at
    once and kept through restarts (``focus.json`` in the store's folder)."""

    op: ClassVar[str] = "set_region"
    region: tuple | None = wire(None, "region")
    reset: bool = wire(False, "bool")


@dataclass(frozen=True)
class Clear(Command):
    op: ClassVar[str] = "clear"


@dataclass(frozen=True)
class Pause(Command):
    op: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Command):
    op: ClassVar[str] = "resume"


@dataclass(frozen=True)
class Reload(Command):
    op: ClassVar[str] = "reload"


@dataclass(frozen=True)
class Snapshot(Command):
    """The current camera frame as a JPEG (at most ``max_size`` px on its longer side; 0: full size)."""

    op: ClassVar[str] = "snapshot"
    max_size: int = wire(0, "int", low=0, high=8192, hint="0 (full size) to 8192 pixels")


@dataclass(frozen=True)
class Status(Command):
    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class ListClasses(Command):
    """Classes with their counts and the ids and thumbnail ids of their examples."""

    op: ClassVar[str] = "classes"


@dataclass(frozen=True)
class Thumbnail(Command):
    """One enrolled example's thumbnail (PNG, model input size), by its thumbnail id."""

    op: ClassVar[str] = "thumbnail"
    thumb: str = wire("", required=True)


@dataclass(frozen=True)
class Inbox(Command):
    """The review inbox: the moments the device was unsure about, most useful first (``item``: one item's JPEG)."""
    op: ClassVar[str] = "inbox"
    item: str = wire("")


@dataclass(frozen=True)
class InboxLabel(Command):
    """Enroll an inbox item into a class (made if new); the item leaves the inbox."""
    op: ClassVar[str] = "inbox_label"
    item: str = wire("", required=True)
    label: str = wire("", required=True)


@dataclass(frozen=True)
class InboxDiscard(Command):
    """Drop an inbox item unlabelled (``all``: every item)."""
    op: ClassVar[str] = "inbox_discard"
    item: str = wire("")
    all: bool = wire(False, "bool")

    def check(self) -> str:
        return "" if self.item or self.all else "item (an inbox item id) or all is required"


@dataclass(frozen=True)
class Quit(Command):
    op: ClassVar[str] = "quit"


# Commands a control-socket client may send, by op (Quit stays local: keys and signals only).
SOCKET_COMMANDS: dict[str, type[Command]] = {c.op: c for c in (
    Enroll, EnrollImage, PredictImage, AddClass, RenameClass, RemoveClass, Undo, Clear, Pause, Resume, Reload,
    Snapshot, Status, ListClasses, Thumbnail, ExampleData, EnrollEmbedding, EnrollEmbeddings, RemoveExamples, Explain,
    Notice, SetRegion, Inbox, InboxLabel, InboxDiscard)}


# Ops the control socket answers itself (no command for the daemon's loop).
SOCKET_OPS = ("hello", "ping", "subscribe", "unsubscribe")


# -- events: what the daemon has to say ---------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """Base of every event; ``time`` is seconds since the epoch."""

    kind: ClassVar[str] = ""
    time: float = field(default_factory=time.time, kw_only=True)

    def as_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["time"] = round(data["time"], 3)
        return {"event": self.kind, **data}


@dataclass(frozen=True)
class PredictionChanged(Event):
    """The shown (smoothed) class changed."""

    kind: ClassVar[str] = "prediction"
    label: str = ""
    raw_label: str = ""
    score: float = 0.0
    confidence: float = 0.0
    confidences: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Enrolled(Event):
    kind: ClassVar[str] = "enrolled"
    label: str = ""
    count: int = 0
    example: int = -1  # the example's id in the store
    thumb: str = ""  # its thumbnail id (readable through the control socket)
    via: str = ""


@dataclass(frozen=True)
class Undone(Event):
    kind: ClassVar[str] = "undone"
    action: str = ""  # the id of the action taken back
    text: str = ""  # what it was: "add 3 examples to 'cat'", "delete 'camera' (3 examples)"
    labels: tuple = ()  # the classes it concerned
    removed: int = 0  # examples the undo removed (an enrollment taken back)
    restored: int = 0  # examples it brought back (a deletion or a clear taken back)
    sources: tuple = ()  # where the removed examples came from (``fleet:<device>:<id>``: another Pi taught it)
    via: str = ""


@dataclass(frozen=True)
class RegionChanged(Event):
    kind: ClassVar[str] = "region"
    region: tuple | None = None  # x0, y0, x1, y1 (fractions of the whole frame), or None: the whole frame
    other_region: int = 0  # camera examples taken with another region: keep them, or delete and re-take them
    via: str = ""


@dataclass(frozen=True)
class NoticeShown(Event):
    kind: ClassVar[str] = "notice"
    text: str = ""
    seconds: float = 60.0
    link: str = ""
    via: str = ""


@dataclass(frozen=True)
class ExamplesRemoved(Event):
    kind: ClassVar[str] = "examples_removed"
    count: int = 0
    labels: tuple = ()
    sources: tuple = ()  # where the removed examples came from, those that have a source
    via: str = ""


@dataclass(frozen=True)
class ClassAdded(Event):
    kind: ClassVar[str] = "class_added"
    label: str = ""
    via: str = ""


@dataclass(frozen=True)
class Removed(Event):
    kind: ClassVar[str] = "removed"
    label: str = ""
    count: int = 0  # examples removed with it
    via: str = ""


@dataclass(frozen=True)
class Renamed(Event):
    kind: ClassVar[str] = "renamed"
    old: str = ""
    new: str = ""
    via: str = ""


@dataclass(frozen=True)
class Cleared(Event):
    kind: ClassVar[str] = "cleared"
    count: int = 0
    via: str = ""


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    paused: bool = True
    via: str = ""


@dataclass(frozen=True)
class CameraTrouble(Event):
    kind: ClassVar[str] = "camera_trouble"
    message: str = ""


@dataclass(frozen=True)
class CameraBack(Event):
    kind: ClassVar[str] = "camera_back"
    source: str = ""


@dataclass(frozen=True)
class InboxChanged(Event):
    """An inbox item came (``added``, ``reason``) or went (``removed``: its id, "*": all; ``label``: "" discarded)."""
    kind: ClassVar[str] = "inbox"
    count: int = 0
    added: str = ""
    reason: str = ""
    removed: str = ""
    label: str = ""
    via: str = ""


@dataclass(frozen=True)
class Reloaded(Event):
    kind: ClassVar[str] = "reloaded"
    examples: int = 0
    restart_needed: tuple = ()  # config sections a SIGHUP could not apply


@dataclass(frozen=True)
class Error(Event):
    kind: ClassVar[str] = "error"
    message: str = ""
    op: str = ""


@dataclass(frozen=True)
class Stats(Event):
    """Periodic: how the daemon is doing."""

    kind: ClassVar[str] = "stats"
    fps: float = 0.0  # = model_fps (its old name)
    model_fps: float = 0.0  # frames a second the model could classify: 1 / the time one frame takes
    camera_fps: float = 0.0  # frames a second the camera delivers
    inference_ms: float = 0.0
    frames: int = 0
    uptime_s: float = 0.0
    examples: int = 0
    paused: bool = False
    gated: int = 0  # frames whose prediction was reused: the scene had not changed (no model run)
    capped: int = 0  # frames skipped by camera.max_inference_fps
    embedded: int = 0
    temperature_c: float | None = None  # the SoC's, on a Raspberry Pi
    throttled: list = field(default_factory=list)  # the firmware's throttling flags now set, on a Pi


# Every event, by kind (what a client's ``event_from_json`` turns back into types).
EVENTS: dict[str, type[Event]] = {e.kind: e for e in (
    PredictionChanged, Enrolled, Undone, NoticeShown, ExamplesRemoved, ClassAdded, Removed, Renamed, Cleared, Paused,
    CameraTrouble, CameraBack, Reloaded, Error, Stats, RegionChanged, InboxChanged)}
