"""Fleet sync as a pure state machine (apps/mqtt/sync.py): Pis that come and go, with an injected clock.

The broker here is a few lines of MQTT's rules that the sync relies on — retained messages (an empty one clears
the topic; a subscriber gets them all on subscribing, flagged retained), live delivery to connected subscribers,
and a persistent session that keeps QoS 1 messages for a client while it is away and hands them over before the
retained replay. The daemon is an in-memory store that applies the requests the sync asks for, as the router
does, and says what changed. No threads, no sockets, no sleeps: everything is delivered in order by ``pump``.
"""

from __future__ import annotations

import base64
import itertools
from collections import deque

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.apps.mqtt import fleet
from teachcam.edge.apps.mqtt.sync import Ask, FleetSync, Publish, Share

GROUP = "home"
EMBEDDING = base64.b64encode(np.ones(8, "<f4").tobytes()).decode()
JPEG = base64.b64encode(b"\xff\xd8jpeg").decode()


class Broker:
    def __init__(self):
        self.retained: dict[str, bytes] = {}
        self.pis: dict[str, Pi] = {}
        self.away: dict[str, list] = {}  # a persistent session's QoS 1 messages, kept while its Pi is away
        self.inbox: deque = deque()
        self.cleared: list[str] = []  # every retained topic an empty message cleared

    def publish(self, sender: Pi, topic: str, payload: bytes, *, retain: bool, qos: int) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
                self.cleared.append(topic)
        for name, pi in self.pis.items():
            if pi.online:
                self.inbox.append((pi, topic, payload, False))
            elif qos == 1 and topic == fleet.op_topic(GROUP):
                self.away[name].append((topic, payload))

    def connect(self, pi: Pi, now: float) -> None:
        pi.online = True
        marker = f"marker-{next(pi.markers)}"
        pi.sync.connected_to_broker(now, marker)
        for topic, payload in self.away.get(pi.name, []):  # the session's queued ops first
            self.inbox.append((pi, topic, payload, False))
        self.away[pi.name] = []
        for topic, payload in sorted(self.retained.items()):  # then the retained replay
            self.inbox.append((pi, topic, payload, True))
        self.inbox.append((pi, f"teachcam/{pi.name}/sync", marker.encode(), False))

    def pump(self, now: float) -> None:
        while self.inbox:
            pi, topic, payload, retained = self.inbox.popleft()
            if pi.online:
                pi.receive(topic, payload, retained, now)


class Pi:
    """A sync and an in-memory daemon store: examples ``id -> (label, source)``."""

    def __init__(self, name: str, broker: Broker):
        self.name, self.broker = name, broker
        self.sync = FleetSync(GROUP, name)
        self.examples: dict[str, tuple[str, str]] = {}
        self.ids = (f"{name}-{i}" for i in itertools.count())
        self.markers = itertools.count()
        self.online = False
        self.refused: list[str] = []
        broker.pis[name], broker.away[name] = self, []

    # -- the daemon ---------------------------------------------------------------------------------------------
    def listing(self) -> list[dict]:
        classes: dict[str, list] = {}
        for example_id, (label, source) in self.examples.items():
            classes.setdefault(label, []).append({"id": example_id, "source": source})
        return [{"label": label, "count": len(items), "examples": items} for label, items in classes.items()]

    def labels(self) -> dict[str, str]:
        """What this Pi holds, by where each example was taught: ``source or own id -> label``."""
        return {(source if fleet.is_from_fleet(source) else f"fleet:{self.name}:{i}"): label
                for i, (label, source) in self.examples.items()}

    def apply(self, op: str, fields: dict, via: str) -> m.Event | None:
        if op == "enroll_embedding":
            known = [i for i, (_, s) in self.examples.items() if s == fields["source"]]
            if known and all(self.examples[i][0] == fields["label"] for i in known):
                return None
            for i in known:
                del self.examples[i]
            example_id = next(self.ids)
            self.examples[example_id] = (fields["label"], fields["source"])
            return m.Enrolled(label=fields["label"], example=example_id, via=via)
        if op == "remove_examples":
            ids, sources = set(fields.get("examples", ())), set(fields.get("sources", ()))
            gone = [i for i, (_, s) in self.examples.items() if i in ids or s in sources]
            removed = [self.examples.pop(i) for i in gone]
            return m.ExamplesRemoved(count=len(gone), labels=tuple(sorted({lb for lb, _ in removed})),
                                     sources=tuple(sorted({s for _, s in removed if s})), via=via) if gone else None
        if op == "rename_class":
            self.examples = {i: ((fields["new"] if lb == fields["old"] else lb), s) for i, (lb, s) in self.examples.items()}
            return m.Renamed(old=fields["old"], new=fields["new"], via=via)
        if op == "remove_class":
            self.examples = {i: (lb, s) for i, (lb, s) in self.examples.items() if lb != fields["label"]}
            return m.Removed(label=fields["label"], via=via)
        if op == "clear":
            self.examples = {}
            return m.Cleared(via=via)
        raise AssertionError(op)

    def changed(self, event: m.Event | None) -> None:
        if event is not None:
            self.carry_out(self.sync.changed(event, self.listing()))

    # -- a person at this Pi ---------------------------------------------------------------------------------
    def teach(self, label: str) -> str:
        example_id = next(self.ids)
        self.examples[example_id] = (label, "button")
        self.changed(m.Enrolled(label=label, example=example_id, via="button"))
        return example_id

    def person(self, op: str, **fields) -> None:
        self.changed(self.apply(op, fields, via="web"))

    def undo(self, example_id: str) -> None:
        """Undo of an enrollment made here (a fleet peer's example is never one: those are deleted instead)."""
        label, source = self.examples.pop(example_id)
        assert not fleet.is_from_fleet(source)
        self.changed(m.Undone(text=f"add 1 example to {label!r}", labels=(label,), removed=1,
                              sources=(source,) if source else (), via="button"))

    # -- the bridge ------------------------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, retained: bool, now: float) -> None:
        if topic == f"teachcam/{self.name}/sync":
            self.sync.sync_marker(payload)
        else:
            self.carry_out(self.sync.message(topic, payload, retained=retained, now=now))

    def carry_out(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.broker.publish(self, action.topic, action.payload, retain=action.retain, qos=action.qos)
            elif isinstance(action, Ask):
                self.changed(self.apply(action.op, action.fields, via="fleet"))
            elif isinstance(action, Share):
                label, _ = self.examples[action.example_id]
                shared = fleet.FleetExample(GROUP, self.name, action.example_id, label, "f" * 64, EMBEDDING, JPEG, 1.0)
                self.broker.publish(self, fleet.example_topic(GROUP, self.name, action.example_id), shared.payload(),
                                    retain=True, qos=1)

    def tick(self, now: float) -> bool:
        if self.sync.tick(now, daemon_up=True):
            self.carry_out(self.sync.caught_up(self.listing()))
            return True
        return False

    def go_away(self) -> None:
        self.online = False
        self.sync.disconnected()


def group(*names: str) -> tuple[Broker, tuple[Pi, ...]]:
    """A broker and Pis of the group, all online and caught up at time 0."""
    broker = Broker()
    pis = tuple(Pi(name, broker) for name in names)
    online(broker, 0.0, *pis)
    return broker, pis


def online(broker: Broker, now: float, *pis: Pi) -> None:
    for pi in pis:
        broker.connect(pi, now)
    broker.pump(now)
    for pi in pis:
        assert pi.tick(now), f"{pi.name} did not catch up"  # its marker came back: at once, no quiet wait
    broker.pump(now)


def test_a_pi_that_joins_learns_everything_and_shares_its_own():
    broker = Broker()
    a, b = Pi("a", broker), Pi("b", broker)
    online(broker, 0.0, a)
    a.teach("cat"), a.teach("mug")
    broker.pump(0.0)
    b.teach("pen")  # taught while b was not yet on the broker: shared once it has caught up
    assert not any(t.startswith("teachcam/fleet/home/example/b/") for t in broker.retained)
    online(broker, 1.0, b)
    assert sorted(b.labels().values()) == sorted(a.labels().values()) == ["cat", "mug", "pen"]
    assert a.labels() == b.labels()


def test_nothing_of_its_own_goes_out_before_the_replay_is_over():
    broker = Broker()
    a = Pi("a", broker)
    a.teach("cat")
    broker.connect(a, 10.0)
    assert [t for t in broker.retained] == []  # subscribed, replay under way: its example waits
    broker.pump(10.0)
    assert a.tick(10.0) and len(broker.retained) == 1


def test_the_quiet_rule_ends_a_replay_whose_marker_never_comes():
    sync = FleetSync(GROUP, "a", quiet=2.0)
    sync.connected_to_broker(100.0, "m1")
    topic = fleet.example_topic(GROUP, "b", "e1")
    payload = fleet.FleetExample(GROUP, "b", "e1", "cat", "f" * 64, EMBEDDING, JPEG, 1.0).payload()
    assert [a.op for a in sync.message(topic, payload, retained=True, now=101.5)] == ["enroll_embedding"]
    assert not sync.tick(103.0, daemon_up=True)  # 1.5 s since the last retained message
    assert not sync.tick(104.0, daemon_up=False)  # the daemon is not there to apply the catch-up
    assert not sync.tick(104.0, daemon_up=True, backlog=3)  # messages received and not handled yet: not quiet
    assert sync.tick(103.6, daemon_up=True)  # 2.1 s of quiet
    assert not sync.tick(200.0, daemon_up=True)  # once
    sync.sync_marker(b"m1")  # late: changes nothing
    assert not sync.catching_up


def test_what_was_withdrawn_while_a_pi_was_away_goes_when_it_returns():
    broker, (a, b) = group("a", "b")
    keep, drop = a.teach("cat"), a.teach("cat")
    broker.pump(0.0)
    assert len(b.examples) == 2
    b.go_away()
    a.undo(drop)  # a withdraws its own example: an empty retained message b does not see
    broker.pump(1.0)
    online(broker, 5.0, b)
    assert b.labels() == a.labels() == {f"fleet:a:{keep}": "cat"}


def test_a_rename_made_while_a_pi_was_away_holds_when_it_returns():
    # The bug this sync was built against: the returning Pi's own examples brought the old name back.
    broker, (a, b) = group("a", "b")
    a.teach("cat"), b.teach("cat")
    broker.pump(0.0)
    b.go_away()
    a.person("rename_class", old="cat", new="kitten")  # a fleet op, kept for b's session
    broker.pump(1.0)
    assert set(a.labels().values()) == {"kitten"}
    online(broker, 5.0, b)
    assert set(b.labels().values()) == {"kitten"} and set(a.labels().values()) == {"kitten"}
    retained_labels = {fleet.decode(t, p, GROUP).label for t, p in broker.retained.items()}
    assert retained_labels == {"kitten"}


def test_ops_sent_while_away_apply_before_the_replay_and_other_ops_travel():
    broker, (a, b, c) = group("a", "b", "c")
    a.teach("cat"), a.teach("mug"), b.teach("mug"), c.teach("pen")
    broker.pump(0.0)
    c.go_away()
    b.person("remove_class", label="mug")  # removes a's mug here, and every Pi removes class mug
    broker.pump(1.0)
    online(broker, 5.0, c)
    for pi in (a, b, c):
        assert sorted(pi.labels().values()) == ["cat", "pen"], pi.name
    a.person("clear")
    broker.pump(6.0)
    assert a.examples == {} and b.examples == {} and c.examples == {}
    assert broker.retained == {}  # every Pi withdrew its own


def test_deleting_an_example_another_pi_taught_asks_its_owner_to_withdraw_it():
    broker, (a, b, c) = group("a", "b", "c")
    taught = a.teach("cat")
    a.teach("cat")
    broker.pump(0.0)
    copy_at_b = next(i for i, (_, s) in b.examples.items() if s == f"fleet:a:{taught}")
    b.person("remove_examples", examples=[copy_at_b])  # a person at b deletes what a taught (the page's delete)
    broker.pump(1.0)
    assert taught not in a.examples  # the owner removed it (and withdrew its retained message)
    assert fleet.example_topic(GROUP, "a", taught) not in broker.retained
    for pi in (b, c):
        assert f"fleet:a:{taught}" not in pi.labels()
    # and it does not come back when c reconnects
    c.go_away()
    online(broker, 5.0, c)
    assert f"fleet:a:{taught}" not in c.labels() and len(c.examples) == 1


def test_an_own_example_the_broker_replays_but_this_pi_no_longer_has_is_withdrawn():
    broker, (a,) = group("a")
    gone = a.teach("cat")
    broker.pump(0.0)
    a.go_away()
    del a.examples[gone]  # removed while the broker was away (no event reached the sync)
    online(broker, 5.0, a)
    assert broker.retained == {}


def test_a_share_the_daemon_cannot_give_is_tried_again_at_the_next_change():
    sync = FleetSync(GROUP, "a")
    sync.connected_to_broker(0.0, "m")
    sync.sync_marker(b"m")
    assert sync.tick(0.0, daemon_up=True)
    listing = [{"label": "cat", "examples": [{"id": "e1", "source": "button"}]}]
    assert sync.caught_up(listing) == [Share("e1", "cat")]
    sync.not_shared("e1")
    assert sync.share_own(listing) == [Share("e1", "cat")]
    assert sync.share_own(listing) == []
    sync.disconnected()
    assert sync.share_own([{"label": "cat", "examples": []}]) == []  # the broker is away: nothing now


def test_a_returning_pi_never_withdraws_its_own_examples_that_still_exist():
    # Peers would see each of them vanish and come back: the replayed own examples are only noted while catching up.
    broker, (a, b) = group("a", "b")
    a.teach("cat"), a.teach("mug")
    broker.pump(0.0)
    a.go_away()
    online(broker, 5.0, a)
    assert broker.cleared == [] and len(broker.retained) == 2
    assert sorted(b.labels().values()) == ["cat", "mug"] and len(b.examples) == 2
