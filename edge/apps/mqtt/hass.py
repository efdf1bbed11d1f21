"""Home Assistant MQTT discovery: one device-based discovery message for a teachcam device.

Published retained on ``<prefix>/device/<device id>/config`` (Home Assistant 2024.11 and later
read device-based discovery), again whenever Home Assistant announces ``online`` on
``<prefix>/status``, and whenever the classes change. What appears in Home Assistant:

* sensor **Label** (state: the class in view, ``nothing recognised`` when none is — not Home
  Assistant's own ``unknown``; attributes: every class's score; unavailable when no state
  arrived for ``expire_after`` seconds) and sensor **Confidence** (%; no value while nothing
  is recognised);
* event **Class seen** — its event types are the class names and ``nothing recognised``:
  automations trigger on one;
* image **Snapshot** — a small JPEG published on each class change;
* select **Class to teach** (``None`` — nothing chosen — until a class is picked; it follows a
  rename and is cleared when its class goes) and button **Capture example** — teach from Home
  Assistant;
* switch **Paused**;
* diagnostic sensors **Camera frames per second** (frames the camera delivers), **Model
  capacity** (frames per second the model could classify: 1 / the time one frame takes),
  **Inference time**, **Examples stored** (published on every change).

Classes appear as options of the select and types of the event, never as entities of their
own: removing a class republishes discovery without it and leaves no orphan entity behind.
"""

from __future__ import annotations

import json

from teachcam.edge import __version__
from teachcam.edge.teaching.names import NOTHING_RECOGNISED, UNKNOWN

NO_CLASS = "(no classes yet)"  # the select's only option while there is no class (never its state)
NO_SELECTION = "None"  # the select's state when nothing is chosen: Home Assistant reads it as no option selected
# Components that earlier versions published: sent with only their platform, so Home Assistant removes them.
RETIRED = {"fps": "sensor"}


def event_type(label: str | None) -> str:
    """The event type of a class change: the class, or ``nothing recognised``."""
    return label if label and label != UNKNOWN else NOTHING_RECOGNISED


def discovery_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/device/{device_id}/config"


def discovery_payload(*, device_id: str, base: str, classes: list[str], expire_after: int, web_url: str = "",
                      name: str = "") -> bytes:
    """The discovery JSON for one device (abbreviated keys, as Home Assistant documents them)."""
    options = list(classes) or [NO_CLASS]
    recognised = f"value_json.label and value_json.label != '{UNKNOWN}'"
    uid = f"teachcam_{device_id}"
    device = {"ids": [uid], "name": name or f"teachcam {device_id}", "mf": "teachcam",
              "mdl": "teachcam (teach a camera by example)", "sw": __version__}
    if web_url:
        device["cu"] = web_url
    state = f"{base}/state"
    stats = f"{base}/stats"
    components = {
        "label": {"p": "sensor", "name": "Label", "uniq_id": f"{uid}_label", "stat_t": state,
                  "val_tpl": f"{{{{ value_json.label if {recognised} else '{NOTHING_RECOGNISED}' }}}}",
                  "json_attr_t": state,
                  "json_attr_tpl": "{{ value_json.scores | tojson }}", "exp_aft": expire_after, "ic": "mdi:eye"},
        "confidence": {"p": "sensor", "name": "Confidence", "uniq_id": f"{uid}_confidence", "stat_t": state,
                       "val_tpl": f"{{{{ ((value_json.confidence * 100) | round(1)) if {recognised} else None }}}}",
                       "unit_of_meas": "%",
                       "stat_cla": "measurement", "exp_aft": expire_after},
        "class_seen": {"p": "event", "name": "Class seen", "uniq_id": f"{uid}_class_seen",
                       "stat_t": f"{base}/event/class", "evt_typ": [*classes, NOTHING_RECOGNISED]},
        "snapshot": {"p": "image", "name": "Snapshot", "uniq_id": f"{uid}_snapshot", "img_t": f"{base}/snapshot",
                     "cont_type": "image/jpeg"},
        "teach_class": {"p": "select", "name": "Class to teach", "uniq_id": f"{uid}_teach_class",
                        "cmd_t": f"{base}/set/teach_class", "stat_t": f"{base}/teach_class", "ops": options,
                        "ic": "mdi:school"},
        "capture": {"p": "button", "name": "Capture example", "uniq_id": f"{uid}_capture",
                    "cmd_t": f"{base}/set/capture", "ic": "mdi:camera-plus"},
        "paused": {"p": "switch", "name": "Paused", "uniq_id": f"{uid}_paused", "cmd_t": f"{base}/set/paused",
                   "stat_t": f"{base}/paused", "pl_on": "ON", "pl_off": "OFF", "ic": "mdi:pause"},
        "camera_fps": {"p": "sensor", "name": "Camera frames per second", "uniq_id": f"{uid}_camera_fps",
                       "stat_t": stats, "val_tpl": "{{ value_json.camera_fps }}", "unit_of_meas": "fps",
                       "ent_cat": "diagnostic", "stat_cla": "measurement", "ic": "mdi:camera"},
        "model_fps": {"p": "sensor", "name": "Model capacity", "uniq_id": f"{uid}_model_fps", "stat_t": stats,
                      "val_tpl": "{{ value_json.model_fps }}", "unit_of_meas": "fps", "ent_cat": "diagnostic",
                      "stat_cla": "measurement", "ic": "mdi:speedometer"},
        "inference_ms": {"p": "sensor", "name": "Inference time", "uniq_id": f"{uid}_inference_ms", "stat_t": stats,
                         "val_tpl": "{{ value_json.inference_ms }}", "unit_of_meas": "ms", "dev_cla": "duration",
                         "ent_cat": "diagnostic", "stat_cla": "measurement"},
        "examples": {"p": "sensor", "name": "Examples stored", "uniq_id": f"{uid}_examples", "stat_t": f"{base}/classes",
                     "val_tpl": "{{ value_json.examples }}", "ent_cat": "diagnostic", "stat_cla": "measurement"},
        "inbox": {"p": "sensor", "name": "Needs a label", "uniq_id": f"{uid}_inbox", "stat_t": f"{base}/inbox",
                  "val_tpl": "{{ value_json.count }}", "ent_cat": "diagnostic", "stat_cla": "measurement",
                  "ic": "mdi:inbox"},
        **{key: {"p": platform} for key, platform in RETIRED.items()},
    }
    payload = {"dev": device, "o": {"name": "teachcam", "sw": __version__}, "cmps": components,
               "avty_t": f"{base}/availability", "qos": 1}
    return json.dumps(payload, separators=(",", ":")).encode()


class ClassToTeach:
    """The *Class to teach* select's choice: a class that exists, or none. It follows a rename and is dropped when its
    class goes, so Capture never enrolls into a name that is gone (nor brings it back); its published state is only
    ever one of the options Home Assistant holds, or ``None`` — a new name waits ``DELAY`` s after the discovery
    that brings it (Home Assistant applies a discovery update asynchronously)."""

    DELAY = 1.0

    def __init__(self):
        self.chosen = ""
        self.due = 0.0  # when to publish the choice again (0: nothing pending)

    def state(self, classes) -> str:
        """The select's state: the choice when it is one of ``classes``. It is not dropped here: ``classes`` may be newer
        than the events handled so far (a rename's listing can come with the event before it), so only
        :meth:`follow` after a change of names decides."""
        return self.chosen if self.chosen in classes else NO_SELECTION

    def choose(self, text: str, classes) -> str:
        """Home Assistant chose ``text``; the one-line warning when it is not a class ("" when it is)."""
        if text in classes:
            self.chosen = text
            return ""
        return "" if text in (NO_CLASS, NO_SELECTION) else \
            f"Class to teach: no class {text!r} (classes: {', '.join(classes) or 'none'})"

    def follow(self, renamed: tuple[str, str] | None, classes, now: float) -> bool:
        """After a change in the store (``renamed``: old, new): True when the choice changed — publish ``None`` now
        (valid whatever options Home Assistant holds); a new name follows after DELAY."""
        chosen = self.chosen
        if renamed is not None and chosen == renamed[0]:
            chosen = renamed[1]
        if chosen not in classes:
            chosen = ""
        if chosen == self.chosen:
            return False
        self.chosen = chosen
        if chosen:
            self.due = now + self.DELAY
        return True

    def take_due(self, now: float) -> bool:
        if self.due and now >= self.due:
            self.due = 0.0
            return True
        return False
