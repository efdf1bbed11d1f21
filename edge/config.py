"""Daemon configuration: frozen dataclasses, a TOML loader that rejects typos, CLI overrides.

Example ``teachcam.toml``::

    bundle = "/opt/teachcam/bundle"
    store = "/var/lib/teachcam/store"
    mode = "knn"                      # knn | head | imagenet
    classes = ["mug", "pen", "phone", "keys"]

    [camera]
    source = "picamera2"              # picamera2 | opencv:0 | file:clip.mp4 | images:DIR | demo

    [buttons]
    pins = [5, 6, 13, 19]             # one per class, BCM numbering
    clear_pin = 26

    [leds]
    pins = [12, 16, 20, 21]

Every key is checked: an unknown key, a wrong type, a pin used twice or a class without a
button is one error naming the key, and the daemon does not start half-configured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from teachcam.edge.daemon import MODES
from teachcam.edge.errors import ClassNameError, ConfigError
from teachcam.edge.model.runtime import PRECISIONS
from teachcam.edge.region import check_region
from teachcam.edge.teaching.inbox import InboxRules
from teachcam.edge.teaching.names import check_new_class_name
from teachcam.edge.teaching.teacher import CAP_POLICIES

DEFAULT_CLASSES = ("one", "two", "three", "four")
# One default everywhere (`teachcam run`, `enroll`, `predict`, `store`); systemd's config names its own.
DEFAULT_BUNDLE = os.environ.get("TEACHCAM_BUNDLE", "build/default-bundle")


def _default_store() -> str:
    if os.environ.get("TEACHCAM_STORE"):
        return os.environ["TEACHCAM_STORE"]
    try:
        return str(Path.home() / ".local/share/teachcam/store")
    except RuntimeError:  # no home: systemd's DynamicUser= (the web and MQTT units) where nss-systemd is not installed
        return "/var/lib/teachcam/store"


DEFAULT_STORE = _default_store()


@dataclass(frozen=True)
class CameraConfig:
    source: str = "demo"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    loop: bool = True
    # Change-gated inference (teachcam.edge.daemon.gate): below this mean luma change (0-255) since the last embedded
    # frame, the model is not run and the last prediction stands. 0 turns gating off.
    gate: float = 3.0
    gate_max_interval: float = 2.0  # ... but a frame is embedded at least this often (seconds)
    max_inference_fps: float = 0.0  # cap on model runs per second, apart from the camera's rate (0: none)
    # The focus region [x0, y0, x1, y1], fractions of the whole picture: the model sees only this part (at its full
    # input resolution). Unset: the whole frame. The page, `teachcam region` and MQTT change it at run time.
    region: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ButtonsConfig:
    enabled: bool = True
    pins: tuple[int, ...] = (5, 6, 13, 19)
    clear_pin: int | None = 26
    pull_up: bool = True
    bounce_time: float = 0.05
    hold_time: float = 0.5  # held longer than this, a class button enrolls one example every hold_time
    clear_hold_time: float = 3.0


@dataclass(frozen=True)
class LedsConfig:
    enabled: bool = True
    pins: tuple[int, ...] = (12, 16, 20, 21)
    pwm: bool = True


@dataclass(frozen=True)
class KnnConfigSection:
    k: int = 5
    threshold: float | None = None
    cap: int = 200
    cap_policy: str = "oldest"


@dataclass(frozen=True)
class OutputConfig:
    terminal: str = "auto"  # auto | on | off : the live view when stdout is a TTY
    json: str = "auto"  # auto | on | off : JSON lines on stdout when it is not a TTY
    preview: bool = False
    oled: bool = False
    oled_i2c_port: int = 1
    oled_i2c_address: int = 0x3C
    # The attached HDMI/DSI screen: the camera's picture with the prediction over it (teachcam.edge.devices.screen).
    screen: bool = False
    screen_device: str = "/dev/fb0"  # the framebuffer, for sources other than the Pi camera
    screen_max_fps: float = 5.0  # framebuffer frames/s: each 1080p frame costs ~15 ms of CPU (scripts/bench/daemon.py --screen)


@dataclass(frozen=True)
class ControlConfig:
    """The control socket (teachcam.edge.link): the CLI, the web page and MQTT reach the daemon through it."""

    enabled: bool = True
    socket: str = ""  # "": $TEACHCAM_SOCKET, else /run/teachcam/control.sock under systemd, else $XDG_RUNTIME_DIR/teachcam
    group: str = "teachcam"  # who may connect (mode 0660); ignored when the group does not exist
    preview_max_size: int = 480  # preview frames for subscribers: longer side, pixels
    preview_max_fps: float = 10.0


@dataclass(frozen=True)
class MqttConfig:
    """`teachcam mqtt` (teachcam.edge.apps.mqtt.bridge): a separate process that bridges the control socket and a broker."""

    enabled: bool = False  # install-pi enables teachcam-mqtt.service when true
    host: str = "localhost"
    port: int = 1883  # 8883 is the usual TLS port
    tls: bool = False
    ca_file: str = ""  # with tls: the CA that signed the broker's certificate ("": the system's CAs)
    cert_file: str = ""  # with tls: a client certificate and its key, when the broker asks for one
    key_file: str = ""
    username: str = ""
    password_file: str = ""  # the password, first line of this file (keep it 0600)
    client_id: str = ""  # "": teachcam-<device id>
    device_id: str = ""  # "": the hostname
    base_topic: str = ""  # "": teachcam/<device id>
    discovery: bool = True  # Home Assistant MQTT discovery
    discovery_prefix: str = "homeassistant"
    fleet_group: str = ""  # "": no fleet sync; else Pis with the same group share what they are taught
    state_interval: float = 30.0  # seconds between state heartbeats
    web_url: str = ""  # the web page's URL, for Home Assistant's "visit device"


@dataclass(frozen=True)
class WebConfig:
    """`teachcam web` (teachcam.edge.apps.web): the page, a separate process that reaches the daemon through the socket."""

    enabled: bool = False  # install-pi enables teachcam-web.service when true
    host: str = "0.0.0.0"  # all interfaces; "127.0.0.1": this machine only
    port: int = 8080
    auth: bool = True  # false only when asked for explicitly: anyone who reaches the port can teach
    token_file: str = ""  # "": $STATE_DIRECTORY/web-token under systemd, else ~/.local/share/teachcam/web-token
    hosts: tuple[str, ...] = ()  # extra names the page may be reached by (IP addresses always work)
    max_upload_mb: int = 64
    hold_rate: float = 5.0  # hold to add: at most this many examples a second per class
    skip_similar: float = 0.97  # hold to add: skip a frame this similar to an example the class has


@dataclass(frozen=True)
class DaemonConfig:
    bundle: str = DEFAULT_BUNDLE
    # A verified copy of the last bundle that started; used (with an error in the journal) when `bundle`
    # is refused — damaged, half-copied, or of an unknown format. Empty: no copy, a bad bundle stops the daemon.
    last_good_bundle: str = ""
    store: str = DEFAULT_STORE
    mode: str = "knn"
    precision: str = "auto"
    threads: int | None = None
    head: str = "trained"  # the bundle head used by mode = "head" (teachcam train --name)
    classes: tuple[str, ...] = DEFAULT_CLASSES
    smoothing: int = 5  # frames in the vote window; 1 = no smoothing
    frames: int | None = None  # stop after this many frames (tests, benchmarks)
    camera: CameraConfig = field(default_factory=CameraConfig)
    buttons: ButtonsConfig = field(default_factory=ButtonsConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    knn: KnnConfigSection = field(default_factory=KnnConfigSection)
    output: OutputConfig = field(default_factory=OutputConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    web: WebConfig = field(default_factory=WebConfig)
    inbox: InboxRules = field(default_factory=InboxRules)  # the review inbox (teachcam.edge.teaching.inbox)

    def validate(self) -> DaemonConfig:
        if self.mode not in MODES:
            raise ConfigError(f"mode = {self.mode!r}: use {_either(MODES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision = {self.precision!r}: use {_either(PRECISIONS)}")
        if self.smoothing < 1:
            raise ConfigError("smoothing must be at least 1 frame")
        if self.knn.cap_policy not in CAP_POLICIES:
            raise ConfigError(f"knn.cap_policy = {self.knn.cap_policy!r}: use {_either(CAP_POLICIES)}")
        if self.knn.k < 1 or self.knn.cap < 1:
            raise ConfigError("knn.k and knn.cap must be at least 1")
        camera = self.camera
        if camera.gate < 0 or camera.gate_max_interval <= 0 or camera.max_inference_fps < 0:
            raise ConfigError("camera.gate and camera.max_inference_fps must be 0 or more (0 turns them off), "
                              "camera.gate_max_interval more than 0 seconds")
        try:
            check_region(camera.region)
        except ValueError as exc:
            raise ConfigError(f"camera.region: {exc}") from None
        if self.knn.threshold is not None and not -1.0 <= self.knn.threshold <= 1.0:
            raise ConfigError(f"knn.threshold = {self.knn.threshold}: a similarity lies between -1 and 1 (default 0.86)")
        if not 16 <= self.control.preview_max_size <= 4096 or not 0 < self.control.preview_max_fps <= 60:
            raise ConfigError("control.preview_max_size must be 16-4096 pixels and control.preview_max_fps 0-60")
        _check_mqtt(self.mqtt)
        if not 1 <= self.web.port <= 65535 or not 1 <= self.web.max_upload_mb <= 4096:
            raise ConfigError("web.port must be 1-65535 and web.max_upload_mb 1-4096")
        if not 0 < self.web.hold_rate <= 30 or not 0 <= self.web.skip_similar <= 1:
            raise ConfigError("web.hold_rate must be 0-30 a second and web.skip_similar 0-1 (0: off)")
        if self.inbox.problem():
            raise ConfigError(self.inbox.problem())
        for key in ("terminal", "json"):
            if getattr(self.output, key) not in ("auto", "on", "off"):
                raise ConfigError(f"output.{key} = {getattr(self.output, key)!r}: use auto, on or off")
        try:
            names = [check_new_class_name(c) for c in self.classes]
        except ClassNameError as exc:
            raise ConfigError(f"classes: {exc}") from None
        if len({n.casefold() for n in names}) != len(names):
            raise ConfigError("classes: two class names are the same (ignoring case)")
        if not names or len(names) > 9:
            raise ConfigError("classes: give 1 to 9 class names")
        if self.buttons.enabled:
            if len(self.buttons.pins) != len(names):
                raise ConfigError(f"buttons.pins: {len(self.buttons.pins)} pin(s) for {len(names)} classes — "
                                  "every class needs its own button")
        used: dict[int, str] = {}
        groups = []
        if self.buttons.enabled:
            groups += [("buttons.pins", p) for p in self.buttons.pins]
            if self.buttons.clear_pin is not None:
                groups.append(("buttons.clear_pin", self.buttons.clear_pin))
        if self.leds.enabled:
            if len(self.leds.pins) not in (0, len(names)):
                raise ConfigError(f"leds.pins: {len(self.leds.pins)} pin(s) for {len(names)} classes; give one per class")
            groups += [("leds.pins", p) for p in self.leds.pins]
        for key, pin in groups:
            if not 0 <= pin <= 27:
                raise ConfigError(f"{key}: GPIO{pin} is not a Raspberry Pi header GPIO (0-27)")
            if pin in used:
                raise ConfigError(f"{key}: GPIO{pin} is already used by {used[pin]}")
            used[pin] = key
        return self


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _check_type(value, annotation, key: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        (item,) = typing.get_args(annotation)[:1]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list")
        return tuple(_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, not {str(value).lower()}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key} must be {annotation.__name__}, not {type(value).__name__} ({value!r})")
    return value


TOPIC_WORD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_mqtt(mqtt: MqttConfig) -> None:
    if not 1 <= mqtt.port <= 65535:
        raise ConfigError(f"mqtt.port = {mqtt.port}: a TCP port is 1-65535")
    for key in ("device_id", "fleet_group"):
        value = getattr(mqtt, key)
        if value and not TOPIC_WORD.match(value):
            raise ConfigError(f"mqtt.{key} = {value!r}: use letters, digits, '-' and '_' (at most 64)")
    for key in ("base_topic", "discovery_prefix"):
        value = getattr(mqtt, key)
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ConfigError(f"mqtt.{key} = {value!r}: a topic without wildcards (+ #) or empty levels")
    if mqtt.state_interval < 1:
        raise ConfigError("mqtt.state_interval must be at least 1 second")
    if (mqtt.cert_file == "") != (mqtt.key_file == ""):
        raise ConfigError("mqtt.cert_file and mqtt.key_file go together (a client certificate and its key)")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a table ([{prefix}{name}])")
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, f"{prefix}{name}")
    return cls(**values)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DaemonConfig:
    """Read a TOML config (or the defaults), apply ``overrides`` (dotted keys), validate.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, or an inconsistent setup.
    """
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path} ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, last = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    config = _build(DaemonConfig, data)
    if "classes" in data and "buttons" not in data and config.buttons.enabled:
        # Default pins follow the number of classes when the config names classes but no pins.
        count = len(config.classes)
        config = dataclasses.replace(config, buttons=dataclasses.replace(config.buttons, pins=ButtonsConfig.pins[:count]))
        if "leds" not in data:
            config = dataclasses.replace(config, leds=dataclasses.replace(config.leds, pins=LedsConfig.pins[:count]))
    return config.validate()
