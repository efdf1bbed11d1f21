"""Fault drills: the daemon killed mid-enrollment, a corrupt bundle on restart, an Edge TPU that will not load."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import time

import pytest

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.errors import BundleIntegrityError
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.teaching.teacher import Teacher
from tests.helpers import DRIVER, augmented_views, run_teachcam, with_edgetpu_model


@pytest.mark.slow
def test_sigkill_during_enrollment_then_restart_keeps_every_acknowledged_example(bundle_path, tmp_path):
    store = tmp_path / "store"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(bundle_path), str(store)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        acked = 0
        deadline = time.monotonic() + 60
        while acked < 4 + 3 * round_ and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("ACK"):
                acked = int(line.split()[1])  # the class count after this acknowledged enrollment
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        with Teacher.open(store) as teacher:  # the restarted daemon's view of the store
            assert teacher.counts()["cat"] >= acked, f"round {round_}: an acknowledged enrollment was lost"


def _config(bundle, store, last_good=""):
    return load_config(None, {"bundle": str(bundle), "store": str(store), "last_good_bundle": str(last_good),
                              "classes": ["cat"], "buttons": {"enabled": False}, "leds": {"enabled": False},
                              "output": {"terminal": "off", "json": "off"}})


def _corrupt(bundle):
    model = bundle / "embedder_int8.tflite"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])  # a half-finished copy


def test_a_corrupt_bundle_on_restart_runs_on_the_last_good_one(bundle_copy, tmp_path, caplog):
    last_good = tmp_path / "last-good"
    frames = augmented_views("chelsea.png", 2, seed=1)
    daemon = Daemon(_config(bundle_copy, tmp_path / "store", last_good), source=ArraySource(frames, loop=True), keyboard=False,
                    stdout=io.StringIO()).start()
    daemon.close()
    assert load_bundle(last_good).manifest == load_bundle(bundle_copy).manifest
    _corrupt(bundle_copy)
    with caplog.at_level(logging.ERROR):
        daemon = Daemon(_config(bundle_copy, tmp_path / "store", last_good), source=ArraySource(frames, loop=True),
                        keyboard=False, stdout=io.StringIO()).start()
    try:
        assert daemon.step(frames[0]).frame == 1
        assert daemon.bundle.path == last_good
    finally:
        daemon.close()
    assert "embedder_int8.tflite does not match the sha256" in caplog.text
    assert "running on the last good bundle" in caplog.text


def test_a_corrupt_bundle_without_a_kept_copy_stops_with_one_line(bundle_copy, tmp_path):
    _corrupt(bundle_copy)
    result = run_teachcam("run", "--bundle", bundle_copy, "--store", tmp_path / "store", "--source", "demo",
                          "--no-gpio", "--frames", "5")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("teachcam: error:") and "does not match the sha256" in lines[-1]
    assert "Traceback" not in result.stderr


def test_edgetpu_delegate_failing_falls_back_to_the_cpu_with_a_warning(bundle_copy, caplog):
    # A bundle that claims an Edge TPU model: here libedgetpu is not installed, so the delegate cannot load.
    with_edgetpu_model(bundle_copy)
    with caplog.at_level(logging.WARNING):
        embedder = Embedder.create(load_bundle(bundle_copy), "auto")
    assert embedder.variant == "int8" and not embedder.entry.edgetpu
    assert "Edge TPU not used" in caplog.text and "running the int8 model on the CPU" in caplog.text


def test_a_bundle_that_fails_its_check_is_never_kept_as_last_good(bundle_copy, tmp_path):
    _corrupt(bundle_copy)
    with pytest.raises(BundleIntegrityError):
        Daemon(_config(bundle_copy, tmp_path / "store", tmp_path / "last-good"), source=ArraySource([]),
               keyboard=False, stdout=io.StringIO()).start()
    assert not (tmp_path / "last-good").exists()
