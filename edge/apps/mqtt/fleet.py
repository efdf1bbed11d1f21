"""Fleet sync over MQTT: what one Pi was taught, every Pi in its group learns.

Every example a device was taught itself (button, web page, CLI, MQTT — not one it learned from
the fleet) is one **retained** message on ``teachcam/fleet/<group>/example/<device>/<example id>``,
at most 8 KB (format 2, binary)::

    b"TCF\x02" | header length (uint16 LE) | header (UTF-8 JSON: {"v": 2, "group", "device", "id",
    "label", "fingerprint", "time", "dim"}) | embedding (dim × float16 LE) | JPEG (the thumbnail)

The thumbnail is the model-input picture, JPEG-encoded to fit what is left of the 8 KB (lower
quality first, then a smaller size: :func:`fit_jpeg`); a Pi with another bundle re-embeds from
it. Format 1 (JSON with a float32 embedding and a 224-px JPEG in base64, 27–39 KB) is still read.

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
import io
import json
import struct
from dataclasses import dataclass

import numpy as np

from teachcam.edge.errors import FleetError

FORMAT = 2  # the example messages this version publishes; ops stay format 1
OP_FORMAT = 1
MAGIC = b"TCF\x02"
WIRE_BUDGET = 8 * 1024  # bytes of one example message, all told
MAX_PAYLOAD = 512 * 1024  # what is read (format 1: ~7 KB of embedding + a ~15-30 KB thumbnail, in base64)
MAX_EMBEDDING = 16384
# The thumbnail's encodings, tried in order until one fits: quality first (JPEG at 224 px and quality 60 keeps
# what the embedder needs, scripts/bench/fleet.py), then size.
JPEG_STEPS = tuple((side, q) for side in (224, 192, 160, 128, 96) for q in (85, 75, 65, 55, 45, 35))
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
        """Format 2: the binary message (the embedding as float16; the JPEG as it is — fit it with fit_jpeg)."""
        vector = np.frombuffer(base64.b64decode(self.embedding), "<f4").astype("<f2")
        header = json.dumps({"v": FORMAT, "group": self.group, "device": self.device, "id": self.id,
                             "label": self.label, "fingerprint": self.fingerprint, "time": round(self.time, 3),
                             "dim": int(vector.size)}, separators=(",", ":"), ensure_ascii=False).encode()
        return MAGIC + struct.pack("<H", len(header)) + header + vector.tobytes() + base64.b64decode(self.jpeg)

    def payload_v1(self) -> bytes:
        """Format 1 (JSON, base64), as teachcam before format 2 published it."""
        return json.dumps({"v": 1, "group": self.group, "device": self.device, "id": self.id,
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
    if payload.startswith(MAGIC):
        data = _unpack(topic, payload)
    else:
        data = _parse_v1(topic, payload)
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


def _unpack(topic: str, payload: bytes) -> dict:
    """Format 2 → the fields as format 1 has them (the embedding as base64 float32, the JPEG as base64)."""
    if len(payload) < len(MAGIC) + 2:
        raise FleetError(f"{topic}: a format-2 example cut short")
    (size,) = struct.unpack_from("<H", payload, len(MAGIC))
    start = len(MAGIC) + 2
    try:
        header = json.loads(payload[start:start + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FleetError(f"{topic}: the example's header is not JSON") from None
    if not isinstance(header, dict) or header.get("v") != FORMAT:
        raise FleetError(f"{topic}: not a format-2 example header")
    dim = header.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_EMBEDDING:
        raise FleetError(f"{topic}: dim must be the embedding's length (1-{MAX_EMBEDDING})")
    body = start + size
    vector = np.frombuffer(payload, "<f2", count=dim, offset=body) if len(payload) >= body + 2 * dim else None
    if vector is None or not np.all(np.isfinite(vector)):
        raise FleetError(f"{topic}: the embedding is cut short or not finite")
    jpeg = payload[body + 2 * dim:]
    if not jpeg.startswith(b"\xff\xd8"):
        raise FleetError(f"{topic}: the thumbnail is not a JPEG")
    return {**header, "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode(),
            "jpeg": base64.b64encode(jpeg).decode()}


def _parse_v1(topic: str, payload: bytes) -> dict:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetError(f"{topic}: not JSON ({str(exc)[:60]})") from None
    if not isinstance(data, dict):
        raise FleetError(f"{topic}: a fleet example is a JSON object")
    if data.get("v") != 1:
        raise FleetError(f"{topic}: format {data.get('v')!r}; this device reads formats 1 and {FORMAT}")
    return data


def fit_jpeg(image, budget: int) -> bytes:
    """The thumbnail (a PIL image) as the best JPEG of at most ``budget`` bytes (JPEG_STEPS, in order); the
    smallest step's when none fits."""
    out = b""
    for side, quality in JPEG_STEPS:
        picture = image if max(image.size) <= side else image.resize(
            (max(1, round(image.width * side / max(image.size))), max(1, round(image.height * side / max(image.size)))),
            resample=3)  # bicubic
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
        out = buffer.getvalue()
        if len(out) <= budget:
            break
    return out


def jpeg_budget(example: FleetExample) -> int:
    """What the thumbnail may take of WIRE_BUDGET, the rest of the message being what it is."""
    rest = len(FleetExample(example.group, example.device, example.id, example.label, example.fingerprint,
                            example.embedding, "", example.time).payload())
    return WIRE_BUDGET - rest

def op_payload(group: str, device: str, op: str, **fields) -> bytes:
    return json.dumps({"v": OP_FORMAT, "group": group, "device": device, "op": op, **fields}).encode()


def decode_op(payload: bytes, group: str) -> dict:
    """A class-wide change from a peer: ``{"op": rename_class|remove_class|clear, "device": D, ...}``.

    Raises:
        FleetError: malformed, another group, or an op that does not travel.
    """
    try:
        data = json.loads(payload[:65536])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FleetError("fleet op: not JSON") from None
    if not isinstance(data, dict) or data.get("v") != OP_FORMAT or data.get("group") != group:
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
