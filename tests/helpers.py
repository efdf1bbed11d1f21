"""What tests share: "one object per class" sets made by augmenting real sample photos, the CLI run as
a user runs it, a daemon on gpiozero's mock pins, and waiting on a condition instead of sleeping."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.devices.source import Source
from teachcam.edge.errors import CameraError, ControlError
from teachcam.edge.link.client import ControlClient
from teachcam.edge.model.images import read_image
from teachcam.edge.samples import sample_photos

ROOT = Path(__file__).resolve().parents[1]


def run_teachcam(*args: str, check: bool = False, env: dict | None = None, timeout: float = 600,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "teachcam.edge.cli", *map(str, args)], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd or ROOT)


def run_python_as(uid: int, gid: int, code: str, *args: str, env: dict | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` run by the OS's Python (same 3.11) with this venv's packages, as another user with no extra groups.

    The venv's own interpreter may sit in root's home, out of other users' reach; its site-packages usually do not.
    Skips the test when they do, or when this is not root.
    """
    import pytest

    site_packages = next(p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages"))
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to become another user) and the OS's python3")
    if not all(os.stat(p).st_mode & 0o001 for p in Path(site_packages).parents):
        pytest.skip("the venv is not reachable for other users here")
    prelude = f"import site; site.addsitedir({site_packages!r})\n"
    return subprocess.run(["/usr/bin/python3", "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env=env if env is not None else {"PATH": "/usr/bin:/bin"},
                          user=uid, group=gid, extra_groups=[])


def augmented_views(photo: str, count: int, seed: int) -> list[np.ndarray]:
    """``count`` camera-like views of one sample photo: random crop, mirror, brightness, noise."""
    (path,) = sample_photos((photo,))
    base = Image.fromarray(read_image(path))
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(count):
        keep = rng.uniform(0.6, 0.95)
        w, h = int(base.width * keep), int(base.height * keep)
        left, top = int(rng.integers(0, base.width - w + 1)), int(rng.integers(0, base.height - h + 1))
        view = base.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
        array = np.asarray(view, np.float32) + rng.normal(0, 6, (view.height, view.width, 3))
        views.append(np.clip(array, 0, 255).astype(np.uint8))
    return views


CLASSES = ("cat", "coffee")


def make_daemon(bundle_path, tmp_path, factory, images, ports=(), **changes):
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"),
                                "classes": list(CLASSES), "smoothing": 1})
    config = replace(config, buttons=replace(config.buttons, pins=(5, 6), clear_pin=26, hold_time=0.2,
                                             clear_hold_time=0.6),
                     leds=replace(config.leds, pins=(12, 16)), output=replace(config.output, terminal="off", json="off"),
                     **changes)
    return Daemon(config.validate(), pin_factory=factory, source=ArraySource(images, loop=True), keyboard=False,
                  stdout=io.StringIO(), ports=list(ports)).start()


def press(factory, pin, seconds=0.05):
    factory.pin(pin).drive_low()
    time.sleep(seconds)
    factory.pin(pin).drive_high()


def settle(daemon, frame):
    """The next camera frame after a press: gpiozero's mock pins call press callbacks synchronously, so the
    command is already queued; the frame applies it."""
    return daemon.step(frame)


def wait_for(condition, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Wait until ``condition()`` is true (gpiozero's own tests wait this way for its threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class FlakySource(Source):
    """Works, then raises for a while (unplugged), then returns nothing, then works again."""

    name = "flaky"

    def __init__(self, frame):
        self.frame, self.reads, self.opens = frame, 0, 0

    def open(self):
        self.opens += 1
        if 2 <= self.opens <= 3:
            raise CameraError("no camera on the bus")

    def read(self):
        self.reads += 1
        if self.reads == 5:
            raise CameraError("unplugged")
        if 6 <= self.reads <= 8:
            return None
        return self.frame


def with_edgetpu_model(bundle: Path) -> Path:
    """Give a bundle an Edge TPU embedder (a copy of the int8 one, as the fake compiler makes)."""
    import json
    import shutil

    from teachcam.edge.model.bundle import file_sha256

    compiled = bundle / "embedder_int8_edgetpu.tflite"
    shutil.copyfile(bundle / "embedder_int8.tflite", compiled)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = dict(next(m for m in manifest["models"] if m["file"] == "embedder_int8.tflite"))
    entry.update(file=compiled.name, sha256=file_sha256(compiled), edgetpu=True, compiled_from="embedder_int8.tflite")
    manifest["models"].append(entry)
    manifest["files"][compiled.name] = entry["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    return bundle


# A daemon in its own process, on the demo camera and mock pins, pressing its button in a loop and
# printing "ACK n" for every acknowledged (durable) enrollment: for kill and signal drills.
DRIVER = textwrap.dedent("""
    import io, sys, threading, time
    from gpiozero.pins.mock import MockFactory, MockPWMPin
    from teachcam.edge.config import load_config
    from teachcam.edge.daemon.loop import Daemon
    from teachcam.edge.ports import Port
    from teachcam.edge.devices.scenes import DemoSource

    class Acks(Port):
        def event(self, event):
            if event.kind == "enrolled":
                print("ACK", event.count, flush=True)

    bundle, store = sys.argv[1], sys.argv[2]
    config = load_config(None, {"bundle": bundle, "store": store, "classes": ["cat"], "buttons": {"pins": [5]},
                                "leds": {"pins": [12]}, "output": {"terminal": "off", "json": "off"}})
    factory = MockFactory(pin_class=MockPWMPin)
    daemon = Daemon(config, pin_factory=factory, source=DemoSource(fps=30), keyboard=False, ports=[Acks()])
    daemon.install_signal_handlers()
    daemon.start()

    def presser():
        while True:
            factory.pin(5).drive_low(); time.sleep(0.03); factory.pin(5).drive_high(); time.sleep(0.07)

    threading.Thread(target=presser, daemon=True).start()
    print("READY", flush=True)
    code = daemon.run()
    daemon.close()
    print("EXIT", code, flush=True)
    sys.exit(code)
""")


def save_views(folder: Path, photo: str, count: int, seed: int) -> list[Path]:
    """``count`` augmented views of a sample photo as JPEG files in ``folder`` (a camera's images: source)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, view in enumerate(augmented_views(photo, count, seed)):
        paths.append(folder / f"{Path(photo).stem}-{seed}-{i}.jpg")
        Image.fromarray(view).save(paths[-1], quality=92)
    return paths


class RunningDaemon:
    """`teachcam run` in its own process, on an images: source, with its own store and socket
    (``socket``: default $TEACHCAM_SOCKET, the test's own)."""

    def __init__(self, bundle: Path, tmp: Path, camera: Path, *extra: str, socket: Path | None = None,
                 name: str = "daemon"):
        self.socket = Path(socket or os.environ["TEACHCAM_SOCKET"])
        self.store, self.log = tmp / f"{name}-store", tmp / f"{name}.log"
        if name == "daemon":
            self.store = tmp / "store"
        self.args = [sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", str(bundle), "--store",
                     str(self.store), "--source", f"images:{camera}", "--no-gpio", "--fps", "20", "--json", *extra]
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "TEACHCAM_SOCKET": str(self.socket)})
        assert wait_for(self.answers, timeout=60), self.log.read_text()

    def answers(self) -> bool:
        try:
            with ControlClient(self.socket):
                return True
        except ControlError:
            assert self.proc.poll() is None, self.log.read_text()
            return False

    def request(self, op: str, **fields) -> dict:
        with ControlClient(self.socket) as client:
            return client.request(op, **fields)

    def status(self) -> dict:
        return self.request("status")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.log.read_text()


class NotifyListener:
    """systemd's side of sd_notify for a test: a datagram socket ``NOTIFY_SOCKET`` points at."""

    def __init__(self, path: Path):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.server.bind(str(path))
        self.address = str(path)

    def messages(self, seconds: float) -> list[str]:
        """What the daemon said over the next ``seconds`` (sooner if it goes quiet for the rest of them)."""
        got, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            self.server.settimeout(max(0.01, end - time.monotonic()))
            try:
                got.append(self.server.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.server.close()
