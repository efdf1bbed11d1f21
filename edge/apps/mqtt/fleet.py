"""Fleet sync over MQTT: what one Pi was taught, every Pi in its group learns.

Every example a device was taught itself (button, web page, CLI, MQTT — not one it learned from
the fleet) is one **retained** message::

    teachcam/fleet/<group>/example/<device>/<example id>
    {"v": 1, "group": G, "device": D, "id": ID, "label": "mug", "fingerprint": SHA256,
     "embedding": BASE64 float32 LE, "jpeg": BASE64 (the model-input thumbnail), "time": T}

An empty retained message on that topic withdraws it (undo, class removed, cleared). A device
that reconnects gets every retained message again, so it catches up; the examples it holds
from the fleet that are no longer on the broker are then removed. Class-wide changes
(rename, remove, clear) also go out once on ``teachcam/fleet/<group>/op`` so that every
device applies them to the examples it holds, whoever taught them; so does ``withdraw``: a
person on one device removed (undo, the page's delete) examples another device taught, and
that device — their owner — removes them and withdraws their retained messages, so the
deletion holds everywhere and survives reconnections. The bridge keeps a persistent MQTT
session and takes the op topic at QoS 1: ops sent while a device was away wait for it at the
broker, and a returning device applies them before it republishes its own examples.

A device ignores its own examples (no echo loop). In the receiving store an example's source
is ``fleet:<device>:<id>``, so the same message twice is one example, and a new label for it
moves it. Same embedder fingerprint → the embedding is used as is; another bundle → the
example is re-embedded from its thumbnail. Names resolve by the store's rules on every device
(``Cat`` joins ``cat``... or is refused, the same everywhere), and per-class caps still hold.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from teachcam.edge.errors import FleetError

FORMAT = 1
MAX_PAYLOAD = 512 * 1024  # one example: ~7 KB of embedding + a ~15 KB thumbnail
MAX_EMBEDDING = 16384
SOURCE_PREFIX = "fleet:"


def example_topic(group: str, device: str, example_id: str) -> str:
    return f"teachcam/fleet/{group}/example/{device}/{example_id}"


def examples_filter(group: str) -> str:
    return f"teachcam/fleet/{group}/example/+/+"


def op_topic(group: str) -> str:
    return f"teachcam/fleet/{group}/op"


def source_of(device: str, example_id: str) -> str:
    """How an example from the fleet is named in the receiving store."""
    return f"{SOURCE_PREFIX}{device}:{example_id}"


def is_from_fleet(source: str) -> bool:
    return source.startswith(SOURCE_PREFIX)


def owner_of(source: str) -> tuple[str, str] | None:
    """(device, example id) of a store source ``fleet:<device>:<id>``; None for any other source."""
    if not is_from_fleet(source):
        return None
    device, _, example_id = source[len(SOURCE_PREFIX):].rpartition(":")
    return (device, example_id) if device and example_id else None


MAX_WITHDRAW = 1000  # example ids in one withdraw op


@dataclass(frozen=True)
class FleetExample:
    group: str
    device: str
    id: str
    label: str
    fingerprint: str
    embedding: str  # base64, as the control socket takes it
    jpeg: str  # base64
    time: float

    def payload(self) -> bytes:
        return json.dumps({"v": FORMAT, "group": self.group, "device": self.device, "id": self.id,
                           "label": self.label, "fingerprint": self.fingerprint, "embedding": self.embedding,
                           "jpeg": self.jpeg, "time": round(self.time, 3)}, separators=(",", ":")).encode()

    @property
    def source(self) -> str:
        return source_of(self.device, self.id)


def parse_topic(topic: str, group: str) -> tuple[str, str]:
    """(device, example id) of an example topic in ``group``.

    Raises:
        FleetError: not an example topic of this group.
    """
    parts = topic.split("/")
    if len(parts) != 6 or parts[:2] != ["teachcam", "fleet"] or parts[3] != "example":
        raise FleetError(f"{topic}: not a fleet example topic")
    if parts[2] != group:
        raise FleetError(f"{topic}: group {parts[2]!r} is not this device's {group!r}")
    return parts[4], parts[5]


def decode(topic: str, payload: bytes, group: str) -> FleetExample:
    """A fleet example from its retained message, checked field by field.

    Raises:
        FleetError: too large, not JSON, a field missing or of the wrong type, an embedding that is not
            float32 of a sane length, a thumbnail that is not base64, or a group/device/id that does not
            match the topic.
    """
    device, example_id = parse_topic(topic, group)
    if len(payload) > MAX_PAYLOAD:
        raise FleetError(f"{topic}: {len(payload)} bytes is more than a fleet example may be ({MAX_PAYLOAD})")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetError(f"{topic}: not JSON ({str(exc)[:60]})") from None
    if not isinstance(data, dict):
        raise FleetError(f"{topic}: a fleet example is a JSON object")
    if data.get("v") != FORMAT:
        raise FleetError(f"{topic}: format {data.get('v')!r}; this device reads format {FORMAT}")
    for key in ("group", "device", "id", "label", "fingerprint", "embedding", "jpeg"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise FleetError(f"{topic}: {key} must be a non-empty string")
    if data["group"] != group:
        raise FleetError(f"{topic}: the example claims group {data['group']!r}, not {group!r}")
    if (data["device"], data["id"]) != (device, example_id):
        raise FleetError(f"{topic}: the example claims to be {data['device']}/{data['id']}, not what its topic says")
    if not isinstance(data.get("time", 0), (int, float)) or isinstance(data.get("time"), bool):
        raise FleetError(f"{topic}: time must be a number")
    try:
        raw = base64.b64decode(data["embedding"], validate=True)
        base64.b64decode(data["jpeg"], validate=True)
    except (binascii.Error, ValueError):
        raise FleetError(f"{topic}: embedding and jpeg must be base64") from None
    if len(raw) % 4 or not 0 < len(raw) // 4 <= MAX_EMBEDDING:
        raise FleetError(f"{topic}: the embedding has {len(raw)} bytes, not a float32 vector of a sane length")
    if len(data["label"]) > 256:
        raise FleetError(f"{topic}: the label is longer than 256 characters")
    return FleetExample(group, device, example_id, data["label"], data["fingerprint"], data["embedding"],
                        data["jpeg"], float(data.get("time", 0)))


def op_payload(group: str, device: str, op: str, **fields) -> bytes:
    return json.dumps({"v": FORMAT, "group": group, "device": device, "op": op, **fields}).encode()


def decode_op(payload: bytes, group: str) -> dict:
    """A class-wide change from a peer: ``{"op": rename_class|remove_class|clear, "device": D, ...}``.

    Raises:
        FleetError: malformed, another group, or an op that does not travel.
    """
    try:
        data = json.loads(payload[:65536])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FleetError("fleet op: not JSON") from None
    if not isinstance(data, dict) or data.get("v") != FORMAT or data.get("group") != group:
        raise FleetError("fleet op: not a format-1 message of this group")
    if not isinstance(data.get("device"), str):
        raise FleetError("fleet op: device missing")
    op = data.get("op")
    needed = {"rename_class": ("old", "new"), "remove_class": ("label",), "clear": (), "withdraw": ("owner",)}.get(op)
    if needed is None:
        raise FleetError(f"fleet op: {op!r} does not travel (rename_class, remove_class, clear, withdraw)")
    for key in needed:
        if not isinstance(data.get(key), str) or not data[key]:
            raise FleetError(f"fleet op {op}: {key} must be a non-empty string")
    if op == "withdraw":
        ids = data.get("ids")
        if (not isinstance(ids, list) or not 0 < len(ids) <= MAX_WITHDRAW
                or not all(isinstance(i, str) and 0 < len(i) <= 256 for i in ids)):
            raise FleetError(f"fleet op withdraw: ids must be a list of 1 to {MAX_WITHDRAW} example ids")
    return data
