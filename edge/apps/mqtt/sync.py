"""Fleet sync as a state machine: what one Pi was taught, every Pi in its group learns — with no I/O here.

Inputs: the broker came (:meth:`FleetSync.connected`) or went (:meth:`disconnected`), a fleet message
(:meth:`message`), a daemon event with the daemon's listing of classes and examples (:meth:`changed`), the clock
(:meth:`tick`), and the end of the broker's retained replay (:meth:`caught_up`). Outputs: :class:`Publish` (to the
broker), :class:`Ask` (a control-socket request for the daemon) and :class:`Share` (publish one of this device's
own examples: the bridge fetches it from the daemon). The bridge carries them out; tests drive the machine with
an injected clock — no broker, no daemon, no sleep.

The rules:

* Every device publishes its own examples retained under ``teachcam/fleet/<group>/examples/<device>/<id>``; an
  empty retained message withdraws one. Peers enroll them with ``source = fleet:<device>:<id>``.
* Class-wide changes made by a person (rename, remove a class, clear) go to every peer as fleet ops (QoS 1, a
  persistent session: they wait at the broker for a device that is away, and apply before its replay ends).
* Deleting here an example another device taught asks its owner to withdraw it (a ``withdraw`` op), so the
  deletion holds everywhere and after every reconnection.
* On (re)connecting, the broker replays every retained example. Until that replay is over — this bridge's own
  marker comes back on ``<base>/sync``, or no retained message came for ``quiet`` seconds — nothing of ours is
  published (a rename a peer made meanwhile applies first). Then fleet examples the broker no longer holds are
  removed here, and own examples are published again (idempotent) or withdrawn when they no longer exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from teachcam.edge import messages as m
from teachcam.edge.apps.mqtt import fleet

log = logging.getLogger(__name__)

CATCH_UP_QUIET = 2.0  # seconds without a retained fleet message: the replay is over (if the marker never comes)


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True)
class Ask:
    """A control-socket request; ``refused`` starts the log line should the daemon refuse it (a warning when
    ``warn``: an example from the fleet that could not be taken; else information: an op that does not apply)."""

    op: str
    fields: dict = field(default_factory=dict)
    refused: str = ""
    warn: bool = False


@dataclass(frozen=True)
class Share:
    """Publish this device's own example ``example_id`` (label ``label``) retained; :meth:`FleetSync.not_shared`
    if the daemon cannot give it."""

    example_id: str
    label: str


class FleetSync:
    def __init__(self, group: str, device: str, *, quiet: float = CATCH_UP_QUIET):
        self.group, self.device, self.quiet = group, device, quiet
        self.connected = False
        self.catching_up = False
        self.replay_over = False
        self.marker = ""
        self.last_retained = 0.0
        self.own: dict[str, str] = {}  # own example id -> label as published
        self.seen: set[str] = set()  # fleet sources the broker holds (retained or live)
        self.own_replayed: set[str] = set()  # own example ids the broker replayed while catching up

    # -- the broker -------------------------------------------------------------------------------------------
    def connected_to_broker(self, now: float, marker: str) -> None:
        """Subscribed (the bridge then publishes ``marker`` on its sync topic): the retained replay begins."""
        self.connected, self.catching_up, self.replay_over = True, True, False
        self.marker, self.last_retained = marker, now
        self.seen.clear()
        self.own.clear()  # every own example again once caught up (retained: idempotent), should the broker have
        # lost them; not before: an op a peer sent while we were away (rename, withdraw) applies first

    def disconnected(self) -> None:
        self.connected = False

    def sync_marker(self, payload: bytes) -> None:
        if self.catching_up and payload.decode(errors="replace") == self.marker:
            self.replay_over = True

    def tick(self, now: float, daemon_up: bool, backlog: int = 0) -> bool:
        """True once, when the replay is over: the bridge then calls :meth:`caught_up` with a fresh listing.
        ``backlog``: messages the bridge received and has not handled yet — the quiet rule waits for them (a bridge
        working through a replay of 10,000 lags behind the broker by more than ``quiet``)."""
        if self.catching_up and self.connected and daemon_up and (
                self.replay_over or (backlog == 0 and now - self.last_retained > self.quiet)):
            self.catching_up = False
            return True
        return False

    # -- a fleet message ------------------------------------------------------------------------------------
    def message(self, topic: str, payload: bytes, *, retained: bool, now: float) -> list:
        if retained:
            self.last_retained = now
        if topic == fleet.op_topic(self.group):
            return self._op(payload)
        try:
            device, example_id = fleet.parse_topic(topic, self.group)
        except fleet.FleetError as exc:
            log.warning("%s", exc)
            return []
        source = fleet.source_of(device, example_id)
        if device == self.device:  # our own, replayed: withdraw what no longer exists here
            if payload and self.catching_up:
                self.own_replayed.add(example_id)
            elif payload and example_id not in self.own:
                return [Publish(topic, b"", retain=True, qos=1)]
            return []
        if not payload:
            self.seen.discard(source)
            return [Ask("remove_examples", {"sources": [source]}, f"fleet withdrawal of {source} not applied here")]
        try:
            example = fleet.decode(topic, payload, self.group)
        except fleet.FleetError as exc:
            log.warning("fleet example refused: %s", exc)
            return []
        self.seen.add(source)  # retained or live, the broker holds it (peers publish retained)
        return [Ask("enroll_embedding", {"label": example.label, "embedding": example.embedding,
                                         "fingerprint": example.fingerprint, "image": example.jpeg, "source": source},
                    f"fleet example {device}/{example_id} ({example.label!r}) not enrolled", warn=True)]

    def _op(self, payload: bytes) -> list:
        try:
            op = fleet.decode_op(payload, self.group)
        except fleet.FleetError as exc:
            log.warning("%s", exc)
            return []
        if op["device"] == self.device:
            return []
        if op["op"] == "withdraw":
            # A person on another device removed examples `owner` taught: the owner removes them from its store
            # (and so withdraws their retained messages, as for any removal); every other device drops them now.
            if op["owner"] == self.device:
                return [Ask("remove_examples", {"examples": op["ids"]}, f"fleet withdraw from {op['device']} not applied here")]
            return [Ask("remove_examples", {"sources": [fleet.source_of(op["owner"], i) for i in op["ids"]]},
                        f"fleet withdraw from {op['device']} not applied here")]
        fields = {k: op[k] for k in ("old", "new", "label") if k in op}
        return [Ask(op["op"], fields, f"fleet {op['op']} from {op['device']} not applied here")]

    # -- the daemon -----------------------------------------------------------------------------------------
    def changed(self, event: m.Event, listing: list[dict] | None) -> list:
        """A change in the daemon's store (``listing``: its ``classes`` reply, None when it did not answer)."""
        actions: list = []
        via = getattr(event, "via", "")
        if via != "fleet":
            op = None
            if isinstance(event, m.Renamed):
                op = ("rename_class", {"old": event.old, "new": event.new})
            elif isinstance(event, m.Removed):
                op = ("remove_class", {"label": event.label})
            elif isinstance(event, m.Cleared):
                op = ("clear", {})
            if op is not None:
                actions.append(Publish(fleet.op_topic(self.group),
                                       fleet.op_payload(self.group, self.device, op[0], **op[1]), qos=1))
            elif isinstance(event, m.Undone):
                actions += self._withdraw_peer_examples(list(event.sources))
            elif isinstance(event, m.ExamplesRemoved):
                actions += self._withdraw_peer_examples(list(event.sources))
        return actions + self.share_own(listing)

    def _withdraw_peer_examples(self, sources: list[str]) -> list:
        """Examples another device taught were removed here by a person (undo, the page's delete): ask their owner
        to withdraw them, so that the deletion holds on every device and after every reconnection."""
        owners: dict[str, list[str]] = {}
        for source in sources:
            owner = fleet.owner_of(source) if isinstance(source, str) else None
            if owner is not None and owner[0] != self.device:
                owners.setdefault(owner[0], []).append(owner[1])
        actions = []
        for owner, ids in owners.items():
            for start in range(0, len(ids), fleet.MAX_WITHDRAW):
                chunk = ids[start:start + fleet.MAX_WITHDRAW]
                actions.append(Publish(fleet.op_topic(self.group),
                                       fleet.op_payload(self.group, self.device, "withdraw", owner=owner, ids=chunk), qos=1))
            log.info("fleet: %d example(s) taught by %s removed here; asked it to withdraw them", len(ids), owner)
        return actions

    def caught_up(self, listing: list[dict] | None) -> list:
        """The broker's retained replay is over: drop fleet examples it no longer has; withdraw stale own ones."""
        if listing is None:
            return []
        held = {e["source"] for c in listing for e in c["examples"] if fleet.is_from_fleet(e["source"])}
        stale = sorted(held - self.seen)
        actions: list = []
        if stale:
            log.info("fleet: %d example(s) were withdrawn while this device was away; removing them", len(stale))
            actions.append(Ask("remove_examples", {"sources": stale}, "fleet catch-up: stale examples not removed"))
        actions += self.share_own(listing)  # every own example again (after the ops that waited for us)
        current = self._own_in(listing)
        for example_id in sorted(self.own_replayed - set(current)):
            actions.append(Publish(fleet.example_topic(self.group, self.device, example_id), b"", retain=True, qos=1))
        self.own_replayed = set()
        log.info("fleet %s: caught up (%d example(s) from other devices, %d of this one's shared)", self.group,
                 len(held) - len(stale), len(current))
        return actions

    @staticmethod
    def _own_in(listing: list[dict]) -> dict[str, str]:
        return {e["id"]: c["label"] for c in listing for e in c["examples"]
                if not fleet.is_from_fleet(e.get("source", ""))}

    def share_own(self, listing: list[dict] | None) -> list:
        """This device's own examples that are new or relabelled, to share; withdrawals of the ones that went.
        While the broker is away or replaying, nothing: the next connection shares them all, once caught up."""
        if not self.connected or self.catching_up or listing is None:
            return []
        current = self._own_in(listing)
        actions: list = []
        for example_id in sorted(set(self.own) - set(current)):
            actions.append(Publish(fleet.example_topic(self.group, self.device, example_id), b"", retain=True, qos=1))
            del self.own[example_id]
        for example_id, label in current.items():
            if self.own.get(example_id) != label:
                actions.append(Share(example_id, label))
                self.own[example_id] = label
        return actions

    def not_shared(self, example_id: str) -> None:
        """The daemon could not give an example to share: try again at the next change."""
        self.own.pop(example_id, None)
