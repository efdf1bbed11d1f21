"""The MQTT bridge's pieces without a broker: the bounded outgoing queue, fleet messages, discovery, config."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from teachcam.edge.apps.mqtt import fleet, hass
from teachcam.edge.config import load_config
from teachcam.edge.errors import ConfigError

pytest.importorskip("paho.mqtt.client")


def test_while_the_broker_is_away_the_queue_is_bounded_and_keeps_the_newest():
    from teachcam.edge.apps.mqtt.bridge import Bridge
    from teachcam.edge.apps.mqtt.transport import MAX_PENDING

    bridge = Bridge(load_config(None, {"mqtt.device_id": "pi1"}))
    assert not bridge.connected
    for i in range(3 * MAX_PENDING):
        bridge.publish("teachcam/pi1/state", {"n": i}, retain=True)  # one topic: only the newest state waits
        bridge.publish(f"teachcam/pi1/event/{i}", {"n": i})
    assert len(bridge.pending) == MAX_PENDING
    assert json.loads(bridge.pending["teachcam/pi1/state"][0]) == {"n": 3 * MAX_PENDING - 1}
    assert f"teachcam/pi1/event/{3 * MAX_PENDING - 1}" in bridge.pending
    assert "teachcam/pi1/event/0" not in bridge.pending  # the oldest went first


def test_a_notice_never_reaches_the_broker():
    """The daemon's notice carries the web page's pairing token for its own OLED: not an event to publish."""
    from teachcam.edge import messages as m
    from teachcam.edge.apps.mqtt.bridge import Bridge

    bridge = Bridge(load_config(None, {"mqtt.device_id": "pi1"}))
    bridge._on_event(m.NoticeShown(text="log in: http://pi:8080/#token=secret", link="http://pi:8080/#token=secret"))
    bridge._on_event(m.CameraBack(source="demo"))
    assert list(bridge.pending) == ["teachcam/pi1/event"]
    assert b"secret" not in bridge.pending["teachcam/pi1/event"][0]


def example(**changes) -> bytes:
    data = {"v": 1, "group": "g", "device": "pi2", "id": "e1", "label": "cat", "fingerprint": "f" * 64,
            "embedding": base64.b64encode(np.ones(1280, "<f4").tobytes()).decode(),
            "jpeg": base64.b64encode(b"\xff\xd8jpeg").decode(), "time": 1.0, **changes}
    return json.dumps(data).encode()


def test_fleet_examples_are_checked_field_by_field():
    topic = fleet.example_topic("g", "pi2", "e1")
    parsed = fleet.decode(topic, example(), "g")
    assert parsed.label == "cat" and parsed.source == "fleet:pi2:e1"
    refused = {
        "group": (example(group="h"), "claims group"),
        "device": (example(device="pi3"), "claims to be"),
        "embedding": (example(embedding=base64.b64encode(b"\x00" * 6).decode()), "float32 vector"),
        "base64": (example(jpeg="%%%"), "base64"),
        "type": (example(label=5), "label must be"),
        "version": (example(v=2), "format"),
        "json": (b"{", "not JSON"),
        "size": (b" " * (fleet.MAX_PAYLOAD + 1), "more than"),
    }
    for _name, (payload, message) in refused.items():
        with pytest.raises(fleet.FleetError, match=message):
            fleet.decode(topic, payload, "g")
    with pytest.raises(fleet.FleetError, match="group 'other'"):
        fleet.decode(fleet.example_topic("other", "pi2", "e1"), example(), "g")
    with pytest.raises(fleet.FleetError, match="does not travel"):
        fleet.decode_op(fleet.op_payload("g", "pi2", "format_disk"), "g")
    assert fleet.decode_op(fleet.op_payload("g", "pi2", "rename_class", old="a", new="b"), "g")["new"] == "b"
    withdraw = fleet.decode_op(fleet.op_payload("g", "pi2", "withdraw", owner="pi1", ids=["e1", "e2"]), "g")
    assert withdraw["owner"] == "pi1" and withdraw["ids"] == ["e1", "e2"]
    for bad in ({"owner": "pi1", "ids": []}, {"owner": "pi1", "ids": "e1"}, {"owner": "pi1", "ids": [5]},
                {"ids": ["e1"]}, {"owner": "pi1", "ids": ["e"] * (fleet.MAX_WITHDRAW + 1)}):
        with pytest.raises(fleet.FleetError, match="withdraw"):
            fleet.decode_op(fleet.op_payload("g", "pi2", "withdraw", **bad), "g")
    assert fleet.owner_of("fleet:pi-door:6614e264d702d-097b0d5e") == ("pi-door", "6614e264d702d-097b0d5e")
    assert fleet.owner_of("button") is None and fleet.owner_of("fleet::x") is None


def test_discovery_names_every_class_and_never_an_empty_option_list():
    payload = json.loads(hass.discovery_payload(device_id="pi1", base="teachcam/pi1", classes=[], expire_after=90))
    assert payload["cmps"]["teach_class"]["ops"] == [hass.NO_CLASS]
    payload = json.loads(hass.discovery_payload(device_id="pi1", base="teachcam/pi1", classes=["cat", "dog"],
                                                expire_after=90, web_url="http://pi1:8080/"))
    # every event type the bridge publishes is declared: the classes and "nothing recognised" (#25)
    assert payload["cmps"]["class_seen"]["evt_typ"] == ["cat", "dog", "nothing recognised"]
    assert payload["dev"]["cu"] == "http://pi1:8080/"
    assert [hass.event_type(x) for x in ("cat", "unknown", "", None)] == ["cat"] + ["nothing recognised"] * 3
    # the camera's rate and the model's capacity are two sensors; the old "fps" one is retired (platform only)
    assert payload["cmps"]["camera_fps"]["val_tpl"] == "{{ value_json.camera_fps }}"
    assert payload["cmps"]["model_fps"]["val_tpl"] == "{{ value_json.model_fps }}"
    assert payload["cmps"]["fps"] == {"p": "sensor"}
    assert payload["cmps"]["examples"]["stat_t"] == "teachcam/pi1/classes"  # published on every change, retained


def render(template: str, value: dict) -> str:
    """A discovery template rendered as Home Assistant does (Jinja2, the payload's JSON as value_json)."""
    jinja2 = pytest.importorskip("jinja2")
    environment = jinja2.Environment()
    environment.filters["tojson"] = json.dumps
    return environment.from_string(template).render(value_json=value)


def test_nothing_recognised_is_neither_home_assistants_unknown_nor_confident():
    cmps = json.loads(hass.discovery_payload(device_id="pi1", base="b", classes=["cat"], expire_after=90))["cmps"]
    label, confidence = cmps["label"]["val_tpl"], cmps["confidence"]["val_tpl"]
    assert render(label, {"label": "cat", "confidence": 0.91}) == "cat"
    assert render(confidence, {"label": "cat", "confidence": 0.91}) == "91.0"
    for nothing in ({"label": "unknown", "confidence": 0.9}, {"label": None, "confidence": 0.0}):
        assert render(label, nothing) == "nothing recognised"
        assert render(confidence, nothing) == "None"  # Home Assistant: no value (not 90 %)


@pytest.mark.parametrize("name", ["unknown", "Unknown", "unavailable", "None", "none", "nothing recognised", "icon",
                                  "friendly_name", "State", "state_class"])
def test_reserved_class_names_are_refused_with_one_line(name):
    from teachcam.edge.errors import ClassNameError
    from teachcam.edge.teaching.names import check_class_name, check_new_class_name

    assert check_class_name(name) == name  # a store that holds one still loads (nothing lost)
    with pytest.raises(ClassNameError, match="reserved word.*choose another class name") as refused:
        check_new_class_name(name)
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="reserved word"):
        load_config(None, {"classes": ["cat", name]})


def test_mqtt_config_is_checked():
    for overrides, message in (({"mqtt.port": 0}, "port"), ({"mqtt.device_id": "a/b"}, "device_id"),
                               ({"mqtt.base_topic": "x/#"}, "wildcards"), ({"mqtt.cert_file": "c"}, "go together"),
                               ({"mqtt.fleet_group": "a b"}, "fleet_group")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_the_chosen_class_follows_a_rename_even_when_a_listing_sees_it_before_its_event():
    """Capture, then a rename at once: the Enrolled event's listing already holds the new name, the Renamed event comes
    after it (ha-check under load lost the choice this way, and Capture was refused)."""
    from teachcam.edge import messages as m
    from teachcam.edge.apps.mqtt.bridge import Bridge

    bridge = Bridge(load_config(None, {"mqtt.device_id": "pi1"}))
    store = {"classes": [{"label": "cat", "count": 2}, {"label": "coffee", "count": 1}]}
    bridge.ask = lambda op, **fields: store
    bridge._on_event(m.Enrolled(label="cat", count=2, example="e", thumb="t", via="mqtt"))
    assert bridge.teach.choose("cat", bridge.classes) == "" and bridge.teach.chosen == "cat"
    store["classes"][0]["label"] = "kitty"  # renamed in the daemon before the bridge handles the next event
    bridge._on_event(m.Enrolled(label="cat", count=3, example="e2", thumb="t2", via="mqtt"))
    assert bridge.teach.chosen == "cat" and bridge.teach.state(bridge.classes) == hass.NO_SELECTION
    bridge._on_event(m.Renamed(old="cat", new="kitty"))
    assert bridge.teach.chosen == "kitty" and bridge.teach.state(bridge.classes) == "kitty"
    store["classes"].pop(0)
    bridge._on_event(m.Removed(label="kitty", count=3))
    assert bridge.teach.chosen == ""
