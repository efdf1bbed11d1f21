"""The Raspberry Pi AI Camera (Sony IMX500) on the Pi: the daemon embeds with the sensor, against picamera2's
IMX500 double (tests/fakes/picamera2/devices/imx500) and a fake imx500-package (tests/fakes/bin).

The bundle's ``packerOut.zip`` here is a stand-in (a zip holding a ``dnnParams.xml`` laid out like the converter's:
the real one needs Sony's 2.3 GB toolchain, tests/test_imx500_convert.py). The double's "sensor" runs the bundle's
own int8 embedder on its crop of the scene and sends the result as the sensor does (8 bits, the tensor's scale).
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import NotifyListener, wait_for

from teachcam.convert.bundle_writer import write_manifest
from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.model.bundle import load_bundle, read_manifest
from teachcam.edge.model.images import read_image
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import sample_photos

FAKES = Path(__file__).parent / "fakes"
DNN_PARAMS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<dnnParams><networks><network name="embedder" ordinal="0" type=""><inputTensors>
<inputTensor persistency="1" ordinal="0" name="pixels:0" l2Offset="5872640" numOfDimensions="3" bitsPerElement="8"
 shift="0" scale="1.0" format="unsigned"><dimensions><dimension size="224" serializationOrder="1" ordinal="0"
 padding="0"/><dimension size="224" serializationOrder="0" ordinal="1" padding="0"/><dimension size="3"
 serializationOrder="2" ordinal="2" padding="0"/></dimensions></inputTensor></inputTensors><outputTensors>
<outputTensor ordinal="0" name="transform-0-embedding_squeeze:0" l2Offset="2617344" numOfDimensions="1"
 bitsPerElement="8" shift="0" scale="0.03125" format="unsigned"><dimensions><dimension size="1280"
 serializationOrder="0" ordinal="0" padding="0"/></dimensions></outputTensor></outputTensors></network></networks>
</dnnParams>
"""


@pytest.fixture
def ai(monkeypatch, bundle_path):
    """picamera2 with an AI Camera connected, its IMX500 double running the bundle's int8 embedder."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [n for n in sys.modules if n == "picamera2" or n.startswith("picamera2.")]:
        monkeypatch.delitem(sys.modules, name)
    camera = importlib.import_module("picamera2")
    sensor = importlib.import_module("picamera2.devices.imx500.imx500")
    assert camera.__file__.startswith(str(FAKES))
    camera.PLATFORM, camera.INSTANCES[:], camera.CAMERAS = "pisp", [], [camera.AI_CAMERA]
    camera.SENSORS.clear()
    cpu = Embedder.create(load_bundle(bundle_path), "int8")
    sensor.NETWORK, sensor.UPLOAD_SECONDS, sensor.DROP = cpu.embed, 0.0, None
    sensor.FLASHED.clear()
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{os.environ['PATH']}")
    yield camera, sensor


@pytest.fixture
def ai_bundle(bundle_copy) -> Path:
    """The default bundle with an AI Camera network (a stand-in package: see the module's docstring)."""
    (bundle_copy / "imx500").mkdir()
    with zipfile.ZipFile(bundle_copy / "imx500" / "packerOut.zip", "w") as package:
        package.writestr("dnnParams.xml", DNN_PARAMS)
        package.writestr("l2staticData.bin", bytes(4096))
    section = {"file": "imx500/packerOut.zip", "backend": "imx500",
               "input": {"width": 224, "height": 224, "format": "RGB uint8 0..255"},
               "output": {"name": "transform-0-embedding_squeeze:0", "shape": [1280], "bits": 8, "scale": 0.03125,
                          "format": "unsigned", "embedding_size": 1280}}
    manifest = read_manifest(bundle_copy)
    write_manifest(bundle_copy, {k: v for k, v in {**manifest, "imx500": section}.items()
                                 if k not in ("files", "format_version", "generator", "created")})
    return bundle_copy


def scene(name: str) -> np.ndarray:
    """A photo as the full sensor sees it (4:3)."""
    from PIL import Image

    return np.asarray(Image.fromarray(read_image(sample_photos((name,))[0])).resize((640, 480)))


def config_for(bundle: Path, tmp_path: Path, **camera):
    config = load_config(None, {"bundle": str(bundle), "store": str(tmp_path / "lib" / "store"),
                                "classes": ["cat", "coffee"], "smoothing": 1,
                                "camera": {"source": "picamera2", **camera},
                                "buttons": {"pins": [5, 6], "clear_pin": 26}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"}})
    return config


def run_in_thread(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return thread


def stop(daemon: Daemon, thread: threading.Thread) -> None:
    daemon.stop()
    thread.join(timeout=10)
    daemon.close()


def test_the_double_keeps_picamera2s_rules(ai, ai_bundle, tmp_path):
    camera, sensor = ai
    from teachcam.edge.model.sensor import network_rpk

    rpk = network_rpk(load_bundle(ai_bundle), tmp_path / "cache")
    assert rpk.name.endswith(".rpk") and network_rpk(load_bundle(ai_bundle), tmp_path / "cache") == rpk  # cached
    opened = camera.Picamera2(0)
    with pytest.raises(RuntimeError, match="Device or resource busy"):  # IMX500 must come before Picamera2()
        sensor.IMX500(str(rpk))
    opened.close()
    with pytest.raises(RuntimeError, match="does not exist"):
        sensor.IMX500(str(tmp_path / "missing.rpk"))
    imx500 = sensor.IMX500(str(rpk))
    assert imx500.get_input_size() == (224, 224) and imx500.camera_num == 0
    imx500.set_auto_aspect_ratio()
    assert imx500.roi == (508, 0, 3040, 3040)  # the centre square of the 4056×3040 sensor
    picam2 = camera.Picamera2(imx500.camera_num)
    picam2.configure(picam2.create_preview_configuration())
    picam2.start()
    camera.SCENE = [scene("chelsea.png")]
    _, metadata = picam2.capture_arrays(["main"])
    assert len(bytes(metadata["CnnOutputTensorInfo"])) == 708  # CnnOutputTensorInfoExported, 16 tensors × 16 dims
    output = imx500.get_outputs(metadata)[0]
    assert output.shape == (1280,) and output.dtype == np.float32
    assert np.all(np.mod(output, 0.03125) == 0)  # 8-bit levels of the tensor's scale
    with pytest.raises(ValueError, match="does not match expected size"):
        imx500.get_outputs({**metadata, "CnnOutputTensorInfo": metadata["CnnOutputTensorInfo"][:-1]})
    assert imx500.get_outputs({}) is None
    camera.CAMERAS = [camera.CAMERA_V2]
    with pytest.raises(RuntimeError, match="dev-node not found"):
        sensor.IMX500(str(rpk))


def test_taught_by_button_the_daemon_embeds_with_the_sensor_not_the_cpu(ai, ai_bundle, tmp_path, factory):
    camera, sensor = ai
    cat, coffee = scene("chelsea.png"), scene("coffee.png")
    camera.SCENE = [cat]
    sensor.DROP = lambda number: number % 4 == 0  # the network falls behind on every fourth frame
    daemon = Daemon(config_for(ai_bundle, tmp_path), pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    calls = []
    cpu_embed = daemon.embedder.cpu.embed
    daemon.embedder.cpu.embed = lambda pixels: calls.append(1) or cpu_embed(pixels)
    thread = run_in_thread(daemon)
    try:
        assert daemon.embedder.kernels == "imx500" and daemon.teacher.store.fingerprint.startswith("imx500:")
        assert wait_for(lambda: daemon.ready, 10)
        for pin, picture in ((5, cat), (6, coffee), (5, cat), (6, coffee)):
            camera.SCENE = [picture]
            time.sleep(0.3)  # frames of the new scene
            before = len(daemon.teacher)
            factory.pin(pin).drive_low()
            time.sleep(0.05)
            factory.pin(pin).drive_high()
            assert wait_for(lambda before=before: len(daemon.teacher) == before + 1, 5)
        for picture, expected in ((cat, "cat"), (coffee, "coffee")):
            camera.SCENE = [picture]
            assert wait_for(lambda expected=expected: daemon.shown == expected, 5)
        status = daemon.status()
        assert status["kernels"] == "imx500" and status["stand_ins"] == 0
        assert status["sensor"]["frames"] > 10 and status["sensor"]["skipped"] > 0  # dropped frames: skipped, counted
        assert calls == []  # no camera frame went through the CPU model
        snap = daemon.teacher.snapshot
        assert all(e.space == "" for e in snap.examples)
    finally:
        stop(daemon, thread)


def test_a_picture_the_sensor_never_saw_is_a_marked_stand_in_and_the_sensors_embeddings_survive_a_fallback(
        ai, ai_bundle, tmp_path, factory, caplog):
    camera, sensor = ai
    camera.SCENE = [scene("chelsea.png")]
    config = config_for(ai_bundle, tmp_path)
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    thread = run_in_thread(daemon)
    from teachcam.edge import messages as m

    replies = []
    try:
        assert wait_for(lambda: daemon.ready, 10)
        daemon.post(m.Enroll(label="cat", via="socket"), replies.append)
        pre = Preprocessor.from_manifest(load_bundle(ai_bundle).preprocessing)
        daemon.post(m.EnrollImage(label="coffee", pixels=pre(read_image(sample_photos(("coffee.png",))[0])),
                                  name="coffee.png", via="cli"), replies.append)
        assert wait_for(lambda: len(replies) == 2, 5)
        assert daemon.status()["stand_ins"] == 1
        spaces = {e.label: e.space for e in daemon.teacher.snapshot.examples}
        assert spaces == {"cat": "", "coffee": "cpu"}
        sensor_row = daemon.teacher.snapshot.embeddings[0].copy()
        fingerprint = daemon.teacher.store.fingerprint
    finally:
        stop(daemon, thread)
    # The AI Camera is unplugged: the daemon runs on the CPU; the store is re-embedded, the sensor's rows kept aside.
    camera.CAMERAS = [camera.CAMERA_V2]
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    try:
        assert daemon.embedder.kernels != "imx500" and "no AI Camera connected" in caplog.text
        assert [e.space for e in daemon.teacher.snapshot.examples] == ["", ""]
        assert (tmp_path / "lib" / "store" / "spaces" / (fingerprint.replace(":", "-") + ".npz")).is_file()
    finally:
        daemon.close()
    camera.CAMERAS = [camera.AI_CAMERA]
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    try:
        snap = daemon.teacher.snapshot
        assert daemon.teacher.store.fingerprint == fingerprint
        assert [e.space for e in snap.examples] == ["", "cpu"]  # the sensor's own row came back; the photo: a stand-in
        np.testing.assert_allclose(snap.embeddings[0], sensor_row, atol=2e-4)  # the store keeps float16 rows
    finally:
        daemon.close()


def test_a_network_the_sensor_refuses_falls_back_to_the_cpu_in_one_line(ai, ai_bundle, tmp_path, factory, caplog):
    camera, sensor = ai
    camera.SCENE = [scene("chelsea.png")]
    config = config_for(ai_bundle, tmp_path)
    from teachcam.edge.daemon.sensor import cache_folder
    from teachcam.edge.model.sensor import network_rpk

    rpk = network_rpk(load_bundle(ai_bundle), cache_folder(config))
    rpk.write_bytes(b"not a network")  # damaged in the cache: the driver's parser refuses it
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    thread = run_in_thread(daemon)
    try:
        assert wait_for(lambda: daemon.ready, 20)
        assert daemon.embedder.kernels != "imx500" and daemon.status()["sensor"]["refused"]
        lines = [r for r in caplog.records if "AI Camera:" in r.getMessage() and r.levelname == "ERROR"]
        assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    finally:
        stop(daemon, thread)
    # Without the packager (no imx500-all), and with precision = "int8": the CPU, the camera as an ordinary one.
    for changes in ({"precision": "int8"},):
        daemon = Daemon(replace(config, **changes), pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
        try:
            assert daemon.embedder.kernels != "imx500" and type(daemon.source).__name__ == "Picamera2Source"
        finally:
            daemon.close()


def test_a_long_first_upload_extends_the_start_and_feeds_the_watchdog_only_while_it_advances(
        ai, ai_bundle, tmp_path, factory, monkeypatch):
    camera, sensor = ai
    camera.SCENE = [scene("chelsea.png")]
    sensor.UPLOAD_SECONDS = 4.0
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    messages = listener.messages

    config = config_for(ai_bundle, tmp_path)
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    thread = run_in_thread(daemon)
    try:
        early = messages(2.5)
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in early)
        assert any("WATCHDOG=1" in m for m in early) and not any("READY=1" in m for m in early)
        assert any("loading the network onto the AI Camera" in m for m in early)
        later = messages(6)
        assert any("READY=1" in m for m in later)
        assert daemon.status()["sensor"]["uploading"] > 0
    finally:
        stop(daemon, thread)
    # The sensor keeps the network: the next start has no upload. An upload that stalls feeds nothing.
    sensor.FLASHED.clear()
    monkeypatch.setattr(sensor.IMX500, "get_fw_upload_progress", lambda self, stage: (1000, 5000) if stage == 2 else (0, 0))
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    thread = run_in_thread(daemon)
    try:
        got = messages(3)
        assert sum(m.startswith("EXTEND_TIMEOUT_USEC=") for m in got) <= 1  # once for the first reading, never again
        assert sum("WATCHDOG=1" in m for m in got) <= 1 and not any("READY=1" in m for m in got)
    finally:
        stop(daemon, thread)
        listener.close()


def test_doctor_and_bench_know_the_ai_camera(ai, ai_bundle, tmp_path):
    from teachcam.edge.tools.bench import format_report, run_bench
    from teachcam.edge.tools.doctor import run_checks

    camera, sensor = ai
    camera.SCENE = [scene("chelsea.png")]
    sensor.DROP = lambda number: number % 5 == 0
    config = config_for(ai_bundle, tmp_path)
    check = next(c for c in run_checks(config, camera=False) if c.name == "aicamera")
    assert check.status == "ok" and "network packaged" in check.detail
    result = run_bench(replace(config, camera=replace(config.camera, fps=30.0)), frames=20, warmup=5)
    assert result["kernels"] == "imx500" and result["sensor"]["frames"] >= 20 and result["sensor"]["skipped"] >= 1
    assert "AI Camera: " in format_report(result) and result["stages"]["invoke"]["p50_ms"] < 0.1  # nothing invoked
    sensor.FLASHED.clear()
    check = next(c for c in run_checks(replace(config, precision="int8"), camera=False) if c.name == "aicamera")
    assert check.status == "ok" and "not used" in check.detail
    camera.CAMERAS = [camera.CAMERA_V2]
    check = next(c for c in run_checks(config, camera=False) if c.name == "aicamera")
    assert "no AI Camera connected" in check.detail
    os.environ["PATH"] = os.environ["PATH"].replace(f"{FAKES / 'bin'}:", "")
    camera.CAMERAS = [camera.AI_CAMERA]
    check = next(c for c in run_checks(replace(config, store=str(tmp_path / "other" / "store")), camera=False)
                 if c.name == "aicamera")
    assert check.status == "fail" and "imx500-package is not installed" in check.detail and "imx500-all" in check.fix


def test_enrolling_a_file_with_the_daemon_stopped_adds_a_stand_in_and_keeps_the_sensors_embeddings(
        ai, ai_bundle, tmp_path, factory):
    """`teachcam enroll FILE` on a store of the AI Camera's embeddings, no daemon running: the file is embedded by
    the CPU as a marked stand-in; the sensor's rows are not touched (no re-embedding of the store)."""
    from helpers import run_teachcam

    from teachcam.edge import messages as m
    from teachcam.edge.teaching.store import EnrollmentStore

    camera, sensor = ai
    camera.SCENE = [scene("chelsea.png")]
    config = config_for(ai_bundle, tmp_path)
    daemon = Daemon(config, pin_factory=factory, keyboard=False, stdout=io.StringIO()).start()
    thread = run_in_thread(daemon)
    replies = []
    try:
        assert wait_for(lambda: daemon.ready, 10)
        daemon.post(m.Enroll(label="cat", via="socket"), replies.append)
        assert wait_for(lambda: replies, 5)
    finally:
        stop(daemon, thread)
    with EnrollmentStore.open(config.store, writable=False) as store:
        fingerprint, sensor_row = store.fingerprint, store.snapshot.embeddings[0].copy()
    done = run_teachcam("enroll", "--bundle", str(ai_bundle), "--store", config.store, "--label", "coffee",
                        str(sample_photos(("coffee.png",))[0]))
    assert done.returncode == 0, done.stderr
    with EnrollmentStore.open(config.store, writable=False) as store:
        assert store.fingerprint == fingerprint
        assert [(e.label, e.space) for e in store.snapshot.examples] == [("cat", ""), ("coffee", "cpu")]
        np.testing.assert_array_equal(store.snapshot.embeddings[0], sensor_row)
    assert not (Path(config.store) / "spaces").exists()


def install_pi_sensor_step(tmp_path: Path, bundle: Path, *, apt_has_it: bool = True):
    """scripts/install-pi's AI Camera step, run by bash as it is written, with the Pi's apt stood in for: apt-cache
    answers whether imx500-all is available, apt-get "installs" it by putting the fake imx500-package on PATH."""
    script = (Path(__file__).resolve().parents[1] / "scripts" / "install-pi").read_text()
    step = script[script.index("# The AI Camera, when the bundle carries"):script.index("\n# 7. The unit")]
    stubs = tmp_path / "stubs"
    if not stubs.exists():
        stubs.mkdir(parents=True)
        (stubs / "apt-cache").write_text("#!/bin/sh\n" + ("echo '  Candidate: 1.0.2'\n" if apt_has_it else
                                                           "echo '  Candidate: (none)'\n"))
        (stubs / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/apt.log\n"
                                       f"ln -sf {FAKES / 'bin' / 'imx500-package'} {stubs}/imx500-package\n")
        for stub in stubs.iterdir():
            stub.chmod(0o755)
        (tmp_path / "opt" / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "opt" / "venv" / "bin" / "python").symlink_to(sys.executable)
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "teachcam.toml").write_text(
            f'bundle = "{bundle}"\nstore = "{tmp_path / "lib" / "store"}"\n[camera]\nsource = "picamera2"\n')
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    env = {"PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin", "PREFIX": str(tmp_path / "opt"),
           "ETC": str(tmp_path / "etc"), "SERVICE_USER": user, "PYTHONPATH": os.pathsep.join(sys.path)}
    prelude = 'say() { echo "install-pi: $*"; }\nchanged=0\n'
    return subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + step + '\necho "changed=$changed"'],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="install-pi runs as root (runuser, install -o)")
def test_install_pi_installs_imx500_all_and_packages_the_network_once(ai_bundle, bundle_path, tmp_path):
    from teachcam.edge.model.sensor import package_digest

    first = install_pi_sensor_step(tmp_path, ai_bundle)
    assert first.returncode == 0, first.stderr
    assert "apt install imx500-all" in first.stdout and "changed=1" in first.stdout
    rpk = tmp_path / "lib" / "imx500" / f"{package_digest(load_bundle(ai_bundle))}.rpk"
    assert rpk.is_file() and f"the AI Camera's network: {rpk}" in first.stdout, first.stdout + first.stderr
    assert (tmp_path / "apt.log").read_text().split()[-1] == "imx500-all"
    again = install_pi_sensor_step(tmp_path, ai_bundle)
    assert again.returncode == 0 and "apt install" not in again.stdout and "changed=0" in again.stdout
    assert (tmp_path / "apt.log").read_text().count("imx500-all") == 1  # installed once, packaged once (cached)
    plain = install_pi_sensor_step(tmp_path / "plain", bundle_path)  # a bundle without an AI Camera network
    assert plain.returncode == 0 and plain.stdout.strip() == "changed=0"
    elsewhere = install_pi_sensor_step(tmp_path / "no-apt", ai_bundle, apt_has_it=False)
    assert elsewhere.returncode == 0 and "imx500-all is not available here" in elsewhere.stdout
