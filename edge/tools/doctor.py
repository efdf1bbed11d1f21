"""``teachcam doctor``: check everything the daemon needs and say how to fix what is wrong.

Each check gives ``ok``, ``warn`` (works, but not as well as it could) or ``fail`` (the
daemon will not start or will not do its job), with one line of detail and, when not ok,
one line saying what to do.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from teachcam.edge.config import DaemonConfig
from teachcam.edge.errors import TeachcamError


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _user_groups() -> set[str]:
    names = set()
    for gid in {os.getgid(), *os.getgroups()}:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:  # a numeric group without a name
            pass
    return names


def check_runtime(bundle=None) -> Check:
    from teachcam.edge.model.runtime import interpreter_module, load_interpreter

    try:
        runtime = interpreter_module()
    except TeachcamError as exc:
        return Check("runtime", "fail", str(exc), "pip install ai-edge-litert")
    detail = f"{runtime.name} {runtime.version}"
    if runtime.name != "ai_edge_litert":
        return Check("runtime", "warn", detail, "pip install ai-edge-litert (faster int8 kernels than the fallback)")
    entry = None if bundle is None else next((m for m in bundle.models if not m.edgetpu and m.precision == "int8"), None)
    if entry is None:
        return Check("runtime", "ok", detail)
    try:
        kernels = load_interpreter(bundle.file(entry.file), num_threads=1).kernels
    except TeachcamError as exc:
        return Check("runtime", "fail", f"{detail}; {exc}", "rebuild the bundle with teachcam convert")
    if kernels != "xnnpack":
        return Check("runtime", "warn", f"{detail}; {entry.file} runs on the reference kernels, not XNNPACK "
                                        "(several times slower)",
                     "LiteRT's XNNPACK reads /proc/cpuinfo to know the CPU: make sure it is readable (no "
                     "ProcSubset=pid in the unit)")
    return Check("runtime", "ok", f"{detail}; {entry.file} runs with XNNPACK")


def check_bundle(config: DaemonConfig) -> tuple[Check, object]:
    from teachcam.edge.model.bundle import load_bundle

    try:
        bundle = load_bundle(config.bundle)
    except TeachcamError as exc:
        return Check("bundle", "fail", str(exc), "copy a bundle with scripts/deploy, or build one with teachcam convert"), None
    sizes = sum(m.raw.get("bytes", 0) for m in bundle.models) / 1e6
    return Check("bundle", "ok", f"{config.bundle}: {len(bundle.models)} models, {sizes:.1f} MB, every sha256 matches"), \
        bundle


def check_edgetpu(config: DaemonConfig, bundle) -> Check:
    from teachcam.edge.model.runtime import edgetpu_available

    compiled = bundle is not None and bundle.find("embedder", precision="int8", edgetpu=True) is not None
    library = edgetpu_available()
    devices = glob.glob("/dev/apex_*") + [p for p in glob.glob("/sys/bus/usb/devices/*/idVendor")
                                          if Path(p).read_text().strip() in ("1a6e", "18d1")]
    if not compiled:
        note = "the bundle has no Edge TPU model: the int8 model runs on the CPU"
        return Check("edgetpu", "ok" if not devices else "warn", note,
                     "" if not devices else "a Coral is plugged in: rebuild with `teachcam convert --edgetpu`")
    if not library:
        return Check("edgetpu", "warn", "the bundle has an Edge TPU model but libedgetpu is not installed",
                     "install libedgetpu1-std from Coral's apt repository (the CPU model runs meanwhile)")
    if not devices:
        return Check("edgetpu", "warn", "libedgetpu is installed but no Coral device is visible",
                     "plug the USB accelerator in (blue port) or check the PCIe driver (gasket-dkms)")
    return Check("edgetpu", "ok", f"Edge TPU model present, libedgetpu loads, {len(devices)} device(s) visible")


def check_aicamera(config: DaemonConfig, bundle) -> Check | None:
    """The AI Camera: connected, a network for it in the bundle, packaged for it (None: neither is here)."""
    from teachcam.edge.daemon.sensor import cache_folder
    from teachcam.edge.model.sensor import INSTALL, SensorUnavailable, camera_present, network_rpk

    has_network = bundle is not None and "imx500" in bundle.manifest
    missing = camera_present()
    if not has_network and missing:
        return None
    if not has_network:
        return Check("aicamera", "warn", "an AI Camera is connected but the bundle has no network for it (the CPU embeds)",
                     "convert with `teachcam convert --imx500` to embed on the sensor")
    if missing:
        return Check("aicamera", "warn" if config.precision == "imx500" else "ok",
                     f"the bundle has an AI Camera network; {missing} (the CPU embeds)", "")
    if config.precision not in ("auto", "imx500") or config.camera.source != "picamera2":
        return Check("aicamera", "ok", f"AI Camera connected; not used (precision = {config.precision!r}, camera "
                                       f"{config.camera.source!r})")
    try:
        rpk = network_rpk(bundle, cache_folder(config))
    except SensorUnavailable as exc:
        return Check("aicamera", "fail", str(exc), INSTALL)
    return Check("aicamera", "ok", f"AI Camera connected, the bundle's network packaged ({rpk}, "
                                   f"{rpk.stat().st_size / 1e6:.1f} MB); its first upload takes minutes, then it is kept")


def check_store(config: DaemonConfig) -> Check:
    from teachcam.edge.teaching.store import EnrollmentStore

    path = Path(config.store)
    if not path.exists():
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if os.access(parent, os.W_OK):
            return Check("store", "ok", f"{path} does not exist yet; it will be created on the first enrollment")
        return Check("store", "fail", f"{path} does not exist and {parent} is not writable",
                     f"create it for this user: sudo install -d -o {pwd.getpwuid(os.getuid()).pw_name} {path}")
    if not os.access(path, os.W_OK):
        return Check("store", "fail", f"{path} is not writable by {pwd.getpwuid(os.getuid()).pw_name}",
                     f"sudo chown -R {pwd.getpwuid(os.getuid()).pw_name} {path} (under systemd: the teachcam user)")
    try:
        store = EnrollmentStore.open(path, writable=False)
    except TeachcamError as exc:
        return Check("store", "fail", str(exc), "see `teachcam store list` and the damaged/ folder")
    counts = store.counts()
    damaged = list((path / "damaged").glob("*")) if (path / "damaged").is_dir() else []
    detail = f"{path}: {sum(counts.values())} examples in {len(counts)} classes, generation {store.snapshot.generation}"
    if damaged:
        return Check("store", "warn", detail + f"; {len(damaged)} damaged generation(s) set aside",
                     f"the store works; inspect or delete {path / 'damaged'}")
    return Check("store", "ok", detail)


def check_camera(config: DaemonConfig, timeout: float = 5.0) -> Check:
    from teachcam.edge.devices.camera import make_source

    spec = config.camera.source
    try:
        source = make_source(spec, width=config.camera.width, height=config.camera.height, loop=True)
        source.open()
        started = time.monotonic()
        frame = None
        while frame is None and time.monotonic() - started < timeout:
            frame = source.read()
        source.close()
    except TeachcamError as exc:
        fix = {"picamera2": "check the ribbon cable, `rpicam-hello --list-cameras`, and that the user is in group video"}
        return Check("camera", "fail", str(exc), fix.get(spec, "check the camera spec in the config"))
    if frame is None:
        return Check("camera", "fail", f"{spec} opened but gave no frame in {timeout:.0f} s", "check the camera")
    return Check("camera", "ok", f"{spec}: {frame.shape[1]}x{frame.shape[0]} frames")


def check_gpio(config: DaemonConfig) -> Check:
    from teachcam.edge.devices.panel import pin_factory_problem, read_board_revision

    if not (config.buttons.enabled or config.leds.enabled):
        return Check("gpio", "ok", "buttons and LEDs are disabled in the config")
    revision, where = read_board_revision()
    if where == "hidden":
        return Check("gpio", "fail", "/proc/cpuinfo and /proc/device-tree cannot be read, so gpiozero cannot tell which "
                                     "board this is and builds no pin factory: buttons and LEDs would be dead",
                     "a systemd unit with ProcSubset=pid hides them: remove it (scripts/install-pi installs a unit "
                     "without it)")
    chips = sorted(glob.glob("/dev/gpiochip*"))
    problem = pin_factory_problem()
    if problem is not None and where == "not a pi" and not chips:
        return Check("gpio", "warn", "not a Raspberry Pi (no board revision in /proc/cpuinfo, no /dev/gpiochip*): "
                                     "keys on a terminal work instead", "on a Pi, enable GPIO; elsewhere use --no-gpio")
    if chips and not all(os.access(c, os.R_OK | os.W_OK) for c in chips):
        return Check("gpio", "fail", f"{chips[0]} is not accessible to this user",
                     "add the user to group gpio: sudo usermod -aG gpio $USER (the service user already is)")
    if problem is not None:
        return Check("gpio", "fail", f"gpiozero builds no pin factory: {problem}",
                     "sudo apt install python3-lgpio (the venv sees it through --system-site-packages); "
                     "rerun scripts/install-pi")
    from gpiozero import Device

    factory = type(Device.pin_factory).__name__
    board = f"board revision {revision:x} (from {where})" if revision is not None else "no board revision"
    return Check("gpio", "ok", f"{factory}, {board}, {len(chips)} GPIO chip(s); buttons on "
                               f"{list(config.buttons.pins)}, LEDs on {list(config.leds.pins)}")


def check_i2c(config: DaemonConfig) -> Check:
    if not config.output.oled:
        return Check("i2c", "ok", "no OLED configured")
    device = Path(f"/dev/i2c-{config.output.oled_i2c_port}")
    if not device.exists():
        return Check("i2c", "fail", f"{device} does not exist", "enable I2C: sudo raspi-config nonint do_i2c 0")
    if not os.access(device, os.R_OK | os.W_OK):
        return Check("i2c", "fail", f"{device} is not accessible", "add the user to group i2c")
    return Check("i2c", "ok", f"{device} present")


def check_screen(config: DaemonConfig) -> Check:
    """The attached screen: the DRM device (Pi camera: picamera2's preview) or the framebuffer, and access."""
    from teachcam.edge.devices.camera import display_size
    from teachcam.edge.devices.screen import ScreenError, framebuffer_geometry

    if not config.output.screen:
        return Check("screen", "ok", "no screen configured ([output] screen = false)")
    if config.camera.source == "picamera2":
        cards = sorted(glob.glob("/dev/dri/card*"))
        if not cards:
            return Check("screen", "fail", "no /dev/dri/card*: no DRM display device",
                         "connect the screen before boot; on a Pi, keep dtoverlay=vc4-kms-v3d in config.txt")
        if not all(os.access(c, os.R_OK | os.W_OK) for c in cards):
            return Check("screen", "fail", f"{cards[0]} is not accessible to this user",
                         "add the user to group video (the service user is)")
        size = display_size()
        return Check("screen", "ok" if size else "warn",
                     f"{cards[0]}; display {size[0]}x{size[1]}" if size else f"{cards[0]}; no connected display found",
                     "" if size else "connect the HDMI/DSI screen (and reboot if it was not there at boot)")
    device = config.output.screen_device
    try:
        geometry = framebuffer_geometry(f"/sys/class/graphics/{Path(device).name}")
    except ScreenError as exc:
        return Check("screen", "fail", str(exc), "connect the screen; the framebuffer appears with it (/dev/fb0)")
    if not os.access(device, os.R_OK | os.W_OK):
        return Check("screen", "fail", f"{device} is not accessible to this user", "add the user to group video")
    return Check("screen", "ok", f"{device}: {geometry.width}x{geometry.height}, {geometry.bits_per_pixel} bits per pixel")


def check_health(*, proc: str = "/proc", sys_root: str = "/sys", vcgencmd: str | None = None) -> Check:
    """The Pi's SoC temperature and the firmware's throttling flags (nothing claimed off a Pi)."""
    from teachcam.edge.devices.health import advice, health

    found = health(proc=proc, sys_root=sys_root, vcgencmd=vcgencmd)
    if not found:
        return Check("health", "ok", "not a Raspberry Pi: no SoC temperature or firmware throttling flags to read")
    temperature = found["temperature_c"]
    parts = [f"SoC {temperature:.1f} °C" if temperature is not None else "SoC temperature unreadable"]
    if found["throttled_bits"] is None:
        parts.append("throttling flags unreadable (no vcgencmd, no firmware sysfs)")
    else:
        parts.append("throttling: " + (", ".join(found["throttled"]) or "none, ever since boot"))
    status, fix = advice(found)
    return Check("health", status, "; ".join(parts), fix)


def check_groups() -> Check:
    needed = ("video", "gpio", "i2c")
    existing = [g for g in needed if _group_exists(g)]
    absent = [g for g in needed if g not in existing]
    missing = sorted(set(existing) - _user_groups())
    user = pwd.getpwuid(os.getuid()).pw_name
    if missing and os.getuid() != 0:
        return Check("permissions", "warn", f"user {user} is not in {', '.join(missing)}",
                     f"sudo usermod -aG {','.join(missing)} $USER, then log in again")
    if absent:  # Debian or Ubuntu on a Pi, other boards: the devices belong to root alone (the unit leaves them out)
        return Check("permissions", "warn", f"user {user} can use {', '.join(existing) or 'no device group'}; "
                     f"no group {' or '.join(absent)} on this system (not Raspberry Pi OS?)",
                     "Raspberry Pi OS has them; elsewhere create them with udev rules for /dev/gpiochip* and "
                     "/dev/i2c-*, run install-pi again — or do without GPIO buttons, LEDs and the OLED")
    return Check("permissions", "ok", f"user {user} can use {', '.join(existing)}")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def run_checks(config: DaemonConfig, *, camera: bool = True) -> list[Check]:
    bundle_check, bundle = check_bundle(config)
    checks = [check_runtime(bundle), bundle_check, check_edgetpu(config, bundle), check_store(config)]
    checks += [c for c in (check_aicamera(config, bundle),) if c is not None]
    if camera:
        checks.append(check_camera(config))
    checks += [check_gpio(config), check_i2c(config), check_screen(config), check_health(), check_groups()]
    return checks


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
