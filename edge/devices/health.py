"""Is the Raspberry Pi well: its SoC temperature, and whether it is (or was) throttled or under-voltage.

Read the way Raspberry Pi OS exposes them: the temperature from
``/sys/class/thermal/thermal_zone0/temp`` (millidegrees), the firmware's throttling flags from
``/sys/devices/platform/soc/soc:firmware/get_throttled`` (recent kernels) or else from
``vcgencmd get_throttled`` (``throttled=0x50005``). Only on a Raspberry Pi (a board revision in
/proc): elsewhere nothing is reported, rather than a laptop's ACPI zone passed off as a Pi's SoC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

# The firmware's get_throttled bits (Raspberry Pi documentation, "vcgencmd").
THROTTLE_FLAGS = {
    0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage has occurred", 17: "frequency capping has occurred", 18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
HOT_C = 80.0  # the firmware starts throttling at 80-85 °C


@cache
def on_a_pi(proc: str = "/proc") -> bool:
    from teachcam.edge.devices.panel import read_board_revision

    return read_board_revision(proc)[0] is not None


def read_temperature(sys_root: str = "/sys") -> float | None:
    try:
        return int(Path(sys_root, "class/thermal/thermal_zone0/temp").read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def read_throttled(sys_root: str = "/sys", vcgencmd: str | None = None) -> int | None:
    """The firmware's throttling bits, or None where neither sysfs nor vcgencmd can say.

    ``vcgencmd``: the tool's path (None: look for it; "": do not run it — a subprocess is too slow for the
    daemon's main loop, which reads sysfs only).
    """
    try:
        return int(Path(sys_root, "devices/platform/soc/soc:firmware/get_throttled").read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    if vcgencmd == "":
        return None
    tool = vcgencmd or shutil.which("vcgencmd") or ("/usr/bin/vcgencmd" if os.path.exists("/usr/bin/vcgencmd") else None)
    if tool is None:
        return None
    try:
        said = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5).stdout.strip()
        return int(said.split("=", 1)[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def throttle_flags(bits: int | None) -> list[str]:
    return [] if not bits else [name for bit, name in THROTTLE_FLAGS.items() if bits & (1 << bit)]


def health(*, proc: str = "/proc", sys_root: str = "/sys", vcgencmd: str | None = None) -> dict:
    """``{"temperature_c", "throttled": [flags], "throttled_bits"}`` on a Raspberry Pi; ``{}`` elsewhere."""
    if not on_a_pi(proc):
        return {}
    bits = read_throttled(sys_root, vcgencmd)
    return {"temperature_c": read_temperature(sys_root), "throttled": throttle_flags(bits), "throttled_bits": bits}


def health_fields() -> dict:
    """What the periodic stats event carries (nothing off a Pi). Built on the main loop: sysfs only."""
    found = health(vcgencmd="")
    return {"temperature_c": found["temperature_c"], "throttled": found["throttled"]} if found else {}


def advice(found: dict) -> tuple[str, str]:
    """(``ok`` | ``warn``, a fix line) for a health reading."""
    flags, temperature = found.get("throttled") or [], found.get("temperature_c")
    fixes = []
    if any("under-voltage" in f for f in flags):
        fixes.append("use the official power supply (5.1 V: 3 A for a Pi 4, 5 A for a Pi 5) and a short, thick cable")
    if any(("throttl" in f or "temperature" in f or "capp" in f) for f in flags) or (temperature or 0) >= HOT_C:
        fixes.append("give the SoC a heatsink or a fan (the Pi 5 Active Cooler), and room to breathe")
    return ("warn" if fixes else "ok"), "; ".join(fixes)
