"""The control protocol as one module: commands from JSON by the rules beside each field, events back to types,
and every socket failure a client meets as one line."""

from __future__ import annotations

import base64
import dataclasses
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from teachcam.edge import messages as m
from teachcam.edge.errors import ControlError
from teachcam.edge.link.client import ControlClient
from teachcam.edge.link.protocol import command_from_json, event_from_json, wire_fields


def all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


def test_every_command_and_event_is_in_the_tables():
    assert set(m.SOCKET_COMMANDS.values()) == set(all_subclasses(m.Command)) - {m.Quit}
    assert set(m.EVENTS.values()) == set(all_subclasses(m.Event))
    assert len(m.EVENTS) == len(set(m.EVENTS))


def example_value(rules: m.Wire):
    return {"text": "mug", "int": int(rules.low or 1), "number": float(rules.high or 0.5), "bool": True,
            "strings": ["a", "b"], "embedding": base64.b64encode(np.ones(4, "<f4").tobytes()).decode(),
            "region": [0.25, 0.25, 0.75, 0.75],
            "examples": [{"label": "mug", "source": "fleet:pi2:e1", "fingerprint": "f" * 64, "image": "aW1n",
                          "embedding": base64.b64encode(np.ones(4, "<f4").tobytes()).decode()}]}[rules.kind]


@pytest.mark.parametrize("op", sorted(m.SOCKET_COMMANDS))
def test_a_command_round_trips_and_every_bad_field_is_one_line(op):
    command_type = m.SOCKET_COMMANDS[op]
    pixels = np.zeros((4, 4, 3), np.uint8)
    decode_image = lambda text, exact: pixels  # noqa: E731 — the server's preprocessing stands aside here
    fields = {key: ("aW1n" if rules.kind == "image" else example_value(rules))
              for key, (name, rules) in wire_fields(command_type).items()}
    command = command_from_json({"op": op, "id": 7, **fields}, decode_image)
    assert type(command) is command_type
    for key, (name, rules) in wire_fields(command_type).items():
        value = getattr(command, name)
        if rules.kind == "image":
            assert value is pixels
        elif rules.kind == "strings":
            assert value == ("a", "b")
        elif rules.kind == "embedding":
            assert value.tolist() == [1.0] * 4
        elif rules.kind == "region":
            assert value == tuple(fields[key])
        elif rules.kind == "examples":  # each checked like enroll_embedding's fields, its picture decoded
            assert [(e["label"], e["source"], e["embedding"].tolist(), e["pixels"] is pixels) for e in value] == \
                [("mug", "fleet:pi2:e1", [1.0] * 4, True)]
        elif key != "via":
            assert value == fields[key]
        # a wrong type for the field is refused in one line that names the op and the field
        wrong = 12 if rules.kind in ("text", "strings", "image", "embedding", "examples") else "x"
        with pytest.raises(ControlError) as refused:
            command_from_json({"op": op, **{**fields, key: wrong}}, decode_image)
        assert "\n" not in str(refused.value) and (key in str(refused.value) or "embedding" in str(refused.value))
        if rules.required:
            with pytest.raises(ControlError, match=f"{op}: {key} is required"):
                command_from_json({"op": op, **{k: v for k, v in fields.items() if k != key}}, decode_image)
    with pytest.raises(ControlError, match=f"{op}: unknown field 'colour'"):
        command_from_json({"op": op, **fields, "colour": "red"}, decode_image)


def test_the_rules_that_are_not_a_fields_own():
    with pytest.raises(ControlError, match="enroll: label .* is required"):
        command_from_json({"op": "enroll"})
    assert command_from_json({"op": "enroll", "index": 2}).index == 2
    assert command_from_json({"op": "status", "via": "x" * 40}).via == "x" * 16  # cut, not refused
    with pytest.raises(ControlError, match="skip_similar must be a similarity from 0"):
        command_from_json({"op": "enroll", "label": "a", "skip_similar": 1.5})
    with pytest.raises(ControlError, match="unknown op 'quit'"):
        command_from_json({"op": "quit"})  # Quit stays local: keys and signals only
    with pytest.raises(ControlError, match="images are not taken here"):
        command_from_json({"op": "predict_image", "image": "aW1n"})


def sample_event(event_type):
    values = {}
    for f in dataclasses.fields(event_type):
        if f.name == "time":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[f.name] = {str: "x", float: 0.25, int: 3, bool: False, tuple: ("a", "b"), dict: {"a": 1},
                          list: ["under-voltage"]}.get(type(default), default)
    return event_type(**values, time=1234.5)


@pytest.mark.parametrize("kind", sorted(m.EVENTS))
def test_event_from_json_is_the_inverse_of_as_json(kind):
    import json

    event = sample_event(m.EVENTS[kind])
    assert event_from_json(json.loads(json.dumps(event.as_json()))) == event
    assert event_from_json({"event": "from_a_newer_daemon", "x": 1}) is None
    assert event_from_json({**event.as_json(), "added_later": 1}) == event  # unknown fields are left out


def test_a_daemon_that_dies_mid_hello_is_one_line_for_the_cli(tmp_path):
    # What SIGKILLing the daemon during CLI enrolls found: a connection reset in the hello read was a traceback.
    path = tmp_path / "dying.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def die_with_the_connection_unaccepted(after=0.3):  # the kernel resets what waited in the listen backlog
        time.sleep(after)
        server.close()

    threading.Thread(target=die_with_the_connection_unaccepted, daemon=True).start()
    with pytest.raises(ControlError) as failed:
        ControlClient(path, timeout=5).connect()
    assert "\n" not in str(failed.value) and str(path) in str(failed.value)
    # and the command line says that line and nothing else
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink()
    server.bind(str(path))
    server.listen(8)
    threading.Thread(target=die_with_the_connection_unaccepted, args=(4.0,), daemon=True).start()  # the CLI starts in < 4 s
    run = subprocess.run([sys.executable, "-m", "teachcam.edge.cli", "status"], capture_output=True, text=True,
                         env={"TEACHCAM_SOCKET": str(path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "went away" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_client_whose_daemon_goes_away_mid_request_gets_one_line(tmp_path):
    path = tmp_path / "half.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def hello_then_vanish():
        conn, _ = server.accept()
        conn.sendall(b'{"hello":"teachcam","protocol":1,"version":"0"}\n')
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    threading.Thread(target=hello_then_vanish, daemon=True).start()
    client = ControlClient(path, timeout=5).connect()
    with pytest.raises(ControlError) as failed:
        client.request("enroll", label="mug")
    client.close()
    server.close()
    assert "\n" not in str(failed.value)


def test_the_docs_tables_are_the_code():
    # docs/control.md lists every op with its fields and every event with its fields: they may not drift.
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "control.md").read_text(encoding="utf-8")
    tables, current = {}, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| op |") or line.startswith("| event |"):
            current = tables.setdefault(cells[0], {})
        elif line.startswith("| `") and current is not None:
            current[cells[0].strip("`")] = re.findall(r"`([a-z_]+)`\*?", cells[1])
        elif not line.startswith("|"):
            current = None
    documented_ops, events = tables["op"], tables["event"]
    assert set(documented_ops) == set(m.SOCKET_COMMANDS) | set(m.SOCKET_OPS)
    assert set(events) == set(m.EVENTS)
    for op, command_type in m.SOCKET_COMMANDS.items():
        assert documented_ops[op] == [k for k in wire_fields(command_type) if k != "via"], op
    for kind, event_type in m.EVENTS.items():
        assert events[kind] == [f.name for f in dataclasses.fields(event_type) if f.name != "time"], kind
    required = {op: [k + "*" for k, (_, r) in wire_fields(c).items() if r.required] for op, c in m.SOCKET_COMMANDS.items()}
    for op, marked in required.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{op}` |"))
        assert all(f"`{name[:-1]}`*" in row for name in marked), op


def test_teachcam_watch_describes_every_event_kind_in_one_line_from_its_typed_event():
    from teachcam.edge.cli.daemon import _describe

    for kind, event_type in m.EVENTS.items():
        line = _describe(event_type().as_json())
        assert "\n" not in line and (kind in line or kind in ("prediction", "enrolled", "stats")), line
    assert _describe(m.Enrolled(label="mug", count=3, via="button").as_json()).endswith(
        "enrolled an example of mug (3 now, via button)")
    assert _describe({"event": "from_a_newer_daemon", "x": 1}).endswith('from_a_newer_daemon {"x": 1}')
