"""Class names: what a name may look like, and the words no new class may be called.

``check_class_name`` holds for every name in a store (old ones too). ``check_new_class_name``
also refuses the *reserved* words, and is what every way of making a class goes through — the
CLI, the page, the control socket, MQTT and Home Assistant, the fleet, the buttons' config —
because a class called one of them would be taken for something else:

* ``unknown`` is what teachcam itself answers when it recognises nothing;
* ``unknown``, ``unavailable`` and ``none`` are Home Assistant's own states (an MQTT select
  or sensor receiving ``None`` resets itself), and ``nothing recognised`` is the label and
  event type this project gives Home Assistant for "nothing recognised";
* the attribute names Home Assistant's MQTT integration drops from a JSON attributes
  payload (``MQTT_ATTRIBUTES_BLOCKED`` in ``homeassistant/components/mqtt/entity.py``, and the sensor's): the
  Label sensor carries each class's score as an attribute named after the class.

Names compare without case (the store's rule: ``Cat`` is ``cat``). A store that already holds
such a class keeps it (nothing lost): it can be renamed, enrolled into and deleted.
"""

from __future__ import annotations

import unicodedata

from teachcam.edge.errors import ClassNameError

MAX_NAME_LENGTH = 64
UNKNOWN = "unknown"  # what teachcam answers when it recognises nothing
NOTHING_RECOGNISED = "nothing recognised"  # Home Assistant's label state and event type when nothing is recognised
_OWN = {UNKNOWN: "teachcam's answer when it recognises nothing",
        "unavailable": "Home Assistant's state of an entity it cannot reach",
        "none": "Home Assistant reads it as 'no value'",
        NOTHING_RECOGNISED: "what Home Assistant is told when nothing is recognised"}
# Home Assistant 2026.2.3: homeassistant/components/mqtt/entity.py MQTT_ATTRIBUTES_BLOCKED, and sensor.py's
# MQTT_SENSOR_ATTRIBUTES_BLOCKED (last_reset, state_class) for the Label sensor
HA_BLOCKED_ATTRIBUTES = frozenset({
    "assumed_state", "available", "device_class", "device_info", "entity_category", "entity_picture",
    "entity_registry_enabled_default", "extra_state_attributes", "force_update", "icon", "friendly_name",
    "should_poll", "state", "supported_features", "unique_id", "unit_of_measurement", "last_reset", "state_class"})
RESERVED = {**_OWN, **{name: "a Home Assistant attribute name: the Label sensor would lose its score"
                       for name in HA_BLOCKED_ATTRIBUTES}}


def check_class_name(name: str) -> str:
    """Return the canonical form of a class name (NFC, trimmed) or raise ClassNameError.

    Rules: 1–64 characters after trimming; any language; no control characters; no ``/``
    or ``\\`` (names become folder names in exports); not ``.`` or ``..``.
    """
    if not isinstance(name, str):
        raise ClassNameError("a class name must be text")
    canonical = unicodedata.normalize("NFC", name).strip()
    if not canonical:
        raise ClassNameError("a class name cannot be empty")
    if len(canonical) > MAX_NAME_LENGTH:
        raise ClassNameError(f"class name is {len(canonical)} characters long; the limit is {MAX_NAME_LENGTH}")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in canonical):
        raise ClassNameError(f"class name {canonical!r} contains control characters")
    if "/" in canonical or "\\" in canonical:
        raise ClassNameError(f"class name {canonical!r} contains a slash; use another character (names become folders)")
    if canonical in (".", ".."):
        raise ClassNameError(f"{canonical!r} is not a usable class name")
    return canonical


def check_new_class_name(name: str) -> str:
    """:func:`check_class_name`, and not a reserved word (for a class that does not exist yet)."""
    canonical = check_class_name(name)
    why = RESERVED.get(canonical.casefold())
    if why is not None:
        raise ClassNameError(f"{canonical!r} is a reserved word ({why}); choose another class name")
    return canonical
