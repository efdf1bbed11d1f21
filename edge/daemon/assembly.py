"""Assembly: a :class:`DaemonConfig` becomes the daemon's parts — bundle and models, the store's teacher, buttons,
keys and LEDs, the ports behind their mailboxes, the camera and its grabber — and a reload (SIGHUP) assembles
again what changed and swaps it in, keeping the store, the control socket and the ports handed in.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from teachcam.edge.config import load_config
from teachcam.edge.daemon import focus, memory, review, sensor
from teachcam.edge.daemon.gate import ChangeGate, signature
from teachcam.edge.daemon.smoothing import Smoother
from teachcam.edge.devices.camera import make_source as open_source
from teachcam.edge.devices.grabber import FrameGrabber
from teachcam.edge.devices.panel import ButtonPanel, KeyboardControls, LedPanel, gpio_available
from teachcam.edge.devices.screen import ScreenPort, open_backend
from teachcam.edge.devices.sinks import JsonLinesSink, OledSink, PreviewSink, TerminalSink
from teachcam.edge.errors import BundleError, ConfigError, ScreenError, TeachcamError
from teachcam.edge.link.server import ControlServer
from teachcam.edge.messages import Reloaded
from teachcam.edge.model.bundle import load_bundle as read_bundle
from teachcam.edge.model.models import Classifier, Head, LogitsHead
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.ports import Mailbox, Port
from teachcam.edge.teaching.knn import KNNConfig
from teachcam.edge.teaching.teacher import Teacher

if TYPE_CHECKING:
    from teachcam.edge.daemon.loop import Daemon

log = logging.getLogger(__name__)


def assemble(d: Daemon) -> None:
    """Load the bundle and store, open the buttons, LEDs, outputs and camera.

    Raises:
        TeachcamError: a bad bundle, store, config or missing hardware the config asks for.
    """
    memory.fix_mmap_threshold()
    load_models(d)
    open_controls(d)
    d.source = camera_source(d)  # before the outputs: the screen draws on the camera's own preview
    open_outputs(d)
    open_camera(d)


def load_bundle(d: Daemon):
    """The configured bundle, or the kept last good one when the configured one is refused."""
    config = d.config
    try:
        bundle = read_bundle(config.bundle)
    except TeachcamError as exc:
        fallback = Path(config.last_good_bundle) if config.last_good_bundle else None
        if fallback is None or not (fallback / "manifest.json").is_file():
            raise
        bundle = read_bundle(fallback)  # raises too if the kept copy is also bad
        log.error("bundle %s refused: %s — running on the last good bundle (%s, built %s)", config.bundle, exc,
                  fallback, bundle.manifest.get("created", "?"))
        return bundle
    if config.last_good_bundle:
        keep_last_good(bundle.path, Path(config.last_good_bundle))
    return bundle


def load_models(d: Daemon) -> None:
    config = d.config
    bundle = load_bundle(d)
    preprocess = Preprocessor.from_manifest(bundle.preprocessing)  # set only once everything has loaded
    if bundle.standalone:
        load_standalone(d, bundle, preprocess)
        return
    embedder = sensor.create_embedder(d, bundle)
    knn = KNNConfig(k=config.knn.k) if config.knn.threshold is None else KNNConfig(k=config.knn.k,
                                                                                   threshold=config.knn.threshold)
    head = None
    if config.mode in ("head", "imagenet"):
        name = "imagenet" if config.mode == "imagenet" else config.head
        head = Head.create(bundle, name, embedder)
    # Only one holder of the store lock at a time: a reload hands the store over to the new models
    # (re-embedding if the embedder changed) and takes it back for the old ones if that fails.
    previous = d.teacher
    if previous is not None:
        previous.close()
    options = {"config": knn, "cap": config.knn.cap, "cap_policy": config.knn.cap_policy}
    try:
        # Re-embedding a large store after a bundle change can outlast WatchdogSec on a Pi: it pings as it goes.
        teacher = Teacher.open(config.store, embedder, progress=d.notifier.ping, **options)
    except TeachcamError:
        if previous is not None:
            d.teacher = Teacher.open(previous.store.path, d.embedder, config=previous.config,
                                        cap=previous.cap, cap_policy=previous.cap_policy)
        raise
    d.bundle, d.embedder, d.teacher, d.head = bundle, embedder, teacher, head
    d.preprocess = preprocess
    d.region = focus.load_region(config.store, config.camera.region)
    d.review = review.reopen(d)
    log.info("bundle %s: %s embedder, mode %s, store %s (%d examples)", config.bundle, embedder.variant,
             config.mode, config.store, len(teacher))


def load_standalone(d: Daemon, bundle, preprocess: Preprocessor) -> None:
    """A standalone classifier (the small CNN) takes the embedder's place; there is nothing to teach."""
    config = d.config
    if config.mode != "head":
        raise BundleError(f"{config.bundle} is a standalone classifier (small CNN) with no embedder: run it with "
                          f"mode = \"head\" in the config or --mode head (mode {config.mode} needs an embedder)")
    classifier = Classifier.create(bundle, config.precision, num_threads=config.threads)
    if d.teacher is not None:  # a reload from an embedder bundle: the store stays on disk, untouched
        d.teacher.close()
    d.bundle, d.embedder, d.teacher = bundle, classifier, None
    d.head = LogitsHead(classifier.name, classifier.labels)
    d.review = review.reopen(d)  # None: nothing to teach
    d.preprocess = preprocess
    log.info("bundle %s: standalone %s classifier %r (%d classes), mode head; the store is not used",
             config.bundle, classifier.variant, classifier.name, len(classifier.labels))


def open_controls(d: Daemon) -> None:
    config = d.config
    wants_gpio = config.buttons.enabled or config.leds.enabled
    has_gpio = d.pin_factory is not None or (wants_gpio and gpio_available())
    if has_gpio and config.buttons.enabled:
        d.buttons = ButtonPanel(config.buttons.pins, config.buttons.clear_pin, d.post,
                                   pull_up=config.buttons.pull_up, bounce_time=config.buttons.bounce_time,
                                   hold_time=config.buttons.hold_time,
                                   clear_hold_time=config.buttons.clear_hold_time, pin_factory=d.pin_factory)
        d.control_mode = "gpio"
    if has_gpio and config.leds.enabled and config.leds.pins:
        d.leds = LedPanel(config.leds.pins, list(config.classes), pwm=config.leds.pwm,
                             pin_factory=d.pin_factory)
    keyboard = d.keyboard_wanted
    if keyboard is None:
        keyboard = d.buttons is None and sys.stdin.isatty()
    if keyboard:
        d.keys = KeyboardControls(d.post, len(config.classes)).start()
        d.control_mode = "gpio+keys" if d.buttons else "keys"
    hint = {"gpio": "buttons: one per class (hold to keep adding); clear: press = undo, hold 3 s = clear all",
            "keys": f"keys: 1-{len(config.classes)} add an example · u undo · c clear all · q quit",
            "none": "no buttons and no terminal: enroll with `teachcam enroll` (through the control socket)"}
    d.controls_hint = hint.get(d.control_mode, hint["gpio"] + " · " + hint["keys"])
    wanted = config.buttons.enabled and d.control_mode == "none"  # asked for buttons, got nothing
    (log.warning if wanted else log.info)("controls: %s", d.controls_hint)


def open_outputs(d: Daemon) -> None:
    """The ports, from the config, each behind its own mailbox (the LEDs too, and the control socket)."""
    output, control = d.config.output, d.config.control
    tty = d.stdout.isatty()
    ports: list[Port] = []
    if output.terminal == "on" or (output.terminal == "auto" and tty):
        ports.append(TerminalSink(list(d.config.classes), d.config.mode, d.controls_hint))
    if output.json == "on" or (output.json == "auto" and not tty):
        ports.append(JsonLinesSink(d.stdout))
    if output.oled:
        ports.append(OledSink(port=output.oled_i2c_port, address=output.oled_i2c_address))
    if output.preview:
        ports.append(PreviewSink())
    if output.screen:
        try:
            backend = open_backend(d.source, output.screen_device, output.screen_max_fps)
            runs_on = {"edgetpu": "Edge TPU", "xnnpack": "CPU", "imx500": "AI Camera"}.get(d.embedder.kernels, "CPU (no XNNPACK)")
            ports.append(ScreenPort(backend, list(d.config.classes), f"{d.embedder.variant} · {runs_on}"))
            log.info("screen: %s", backend.name)
        except ScreenError as exc:  # no screen: one line, and the daemon runs on without it
            log.error("screen: %s; running without it", exc)
    if d.leds is not None:
        ports.append(d.leds)
    if not d.kept:  # the control socket and ports handed in stay open across a reload
        if control.enabled:
            try:
                d.control = ControlServer(control.socket or None, d.post, preprocess=lambda: d.preprocess,
                                             group=control.group, preview_size=control.preview_max_size,
                                             preview_fps=control.preview_max_fps).start()
            except TeachcamError as exc:  # the camera, buttons and LEDs work without it
                log.error("control socket: %s; running without it (teachcam enroll/status cannot reach "
                          "this daemon)", exc)
        d.kept = [Mailbox(port) for port in [*([d.control] if d.control else []), *d.extra_ports]]
    d.mailboxes = [Mailbox(port) for port in ports] + d.kept


def camera_source(d: Daemon):
    camera = d.config.camera
    # The low-resolution camera stream is asked for at the size the bundle resizes to (shorter side),
    # but not below 64 rows (a small CNN's 28 px: the ISP scales to 64, the CPU does the rest — cheap).
    shorter = max(d.preprocess.shorter_side, 64)
    lores = (2 * round(shorter * camera.width / camera.height / 2), shorter)
    return d.source_override or sensor.camera_source(d, lores) or open_source(
        camera.source, width=camera.width, height=camera.height, loop=camera.loop, fps=camera.fps, inference_size=lores)


def open_camera(d: Daemon) -> None:
    camera = d.config.camera
    source = d.source
    d.gate = ChangeGate(camera.gate, camera.gate_max_interval, camera.max_inference_fps)
    summarize = signature if d.gate.enabled else None
    d.grabber = FrameGrabber(source, fps=camera.fps, summarize=summarize)
    d.set_region(d.region)  # the preparation, and the region asked of the camera's ISP when it opens (and reopens)
    d.grabber.start()


def without_sensor(d: Daemon) -> None:
    """The AI Camera refused its network: the CPU's embedder, and the camera as an ordinary Pi camera."""
    d.grabber.stop()
    load_models(d)
    d.source = camera_source(d)
    open_camera(d)

# -- running -------------------------------------------------------------------------------------


def reload(d: Daemon) -> None:
    """SIGHUP: re-read the config and the bundle; on any error keep running as before."""
    try:
        new = load_config(d.config_path) if d.config_path else d.config
    except ConfigError as exc:
        log.error("reload: %s; keeping the running configuration", exc)
        return
    old = d.config
    d.config = new
    try:
        load_models(d)
    except TeachcamError as exc:
        d.config = old
        log.error("reload: %s; keeping the running bundle", exc)
        return
    if new.camera != old.camera:
        d.grabber.stop()
        d.source = camera_source(d)
        open_camera(d)
    else:
        d.set_region(d.region)  # the new bundle's preparation (load_models read the kept region again)
    d.smoother = Smoother(new.smoothing)
    if (new.buttons, new.leds, new.classes, new.output, new.mode) != (old.buttons, old.leds, old.classes,
                                                                      old.output, old.mode):
        close_outputs(d, keep=True)
        close_controls(d)
        open_controls(d)
        open_outputs(d)
    restart = tuple(name for name in ("control",) if getattr(new, name) != getattr(old, name))
    for name in restart:
        log.warning("reload: [%s] changed; it takes effect at the next restart (systemctl restart teachcam)", name)
    examples = len(d.teacher) if d.teacher is not None else 0
    log.warning("reloaded the configuration and the bundle (%d examples kept)", examples)
    d.event(Reloaded(examples=examples, restart_needed=restart))


def close_controls(d: Daemon) -> None:
    for part in (d.keys, d.buttons):
        if part is not None:
            part.close()
    d.keys = d.buttons = None
    d.control_mode = "none"


def close_outputs(d: Daemon, *, keep: bool = False) -> None:
    """Close the ports (the LEDs with them); ``keep``: not the control socket nor ports handed in (a reload)."""
    for mailbox in d.mailboxes:
        if keep and mailbox in d.kept:
            continue
        try:
            mailbox.close()
        except Exception as exc:  # closing hardware on the way out must not hide the exit status
            log.debug("closing %s failed: %s", mailbox.port.name, exc)
    d.mailboxes = []
    d.leds = None
    if not keep:
        d.kept, d.control = [], None


def keep_last_good(bundle: Path, target: Path) -> None:
    """Copy a bundle that just loaded and verified to ``target`` (atomically), unless it is already there."""
    manifest = (bundle / "manifest.json").read_bytes()
    if (target / "manifest.json").is_file() and (target / "manifest.json").read_bytes() == manifest:
        return
    staging = target.with_name(f".{target.name}.partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundle, staging)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        log.info("kept a copy of bundle %s as the last good bundle (%s)", bundle, target)
    except OSError as exc:
        log.warning("could not keep a copy of the bundle at %s (%s); a bad bundle later would stop the daemon",
                    target, exc)
