"""Change-gated inference and the Pi's health: frugal on a still scene, never late on a change."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.messages import Enroll
from teachcam.edge.teaching.store import thumbnail_digest
from tests.helpers import augmented_views, wait_for


def noisy(frame: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """The same scene as a camera films it: a fresh sensor noise on every frame."""
    rng = np.random.default_rng(seed)
    return [np.clip(frame + rng.normal(0, 5, frame.shape), 0, 255).astype(np.uint8) for _ in range(count)]


class Views:
    """Every view the daemon's loop makes (a port's mailbox would coalesce them: it keeps the newest)."""

    def __init__(self, daemon):
        self.seen, self.step = [], daemon.step
        daemon.step = self

    def __call__(self, *args, **kwargs):
        view = self.step(*args, **kwargs)
        self.seen.append((view.frame, view.raw_label))
        return view


def make(bundle_path, tmp_path, frames, *, gate=3.0, fps=0.0, taught=None, smoothing=1, **camera):
    """A daemon on ``frames`` (fps 0: every frame, one read ahead, none dropped), its store taught ``taught``."""
    if taught:
        teach(bundle_path, tmp_path / "store", *taught)
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat", "cup"],
                                "smoothing": smoothing, "frames": len(frames), "buttons": {"enabled": False},
                                "leds": {"enabled": False}, "output": {"terminal": "off", "json": "off"},
                                "camera": {"fps": fps, "gate": gate, **camera}})
    daemon = Daemon(config, source=ArraySource(frames), keyboard=False, stdout=io.StringIO()).start()
    return daemon


def teach(bundle_path, store, cat, cup):
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Embedder
    from teachcam.edge.model.preprocess import Preprocessor
    from teachcam.edge.teaching.teacher import Teacher

    bundle = load_bundle(bundle_path)
    embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    with Teacher.open(store, embedder) as teacher:
        for label, frame in (("cat", cat), ("cup", cup)):
            teacher.add(label, embedder.embed(pre(frame)), pre(frame), source="test")


@pytest.fixture(scope="module")
def scenes():
    cat = augmented_views("chelsea.png", 2, seed=60)
    cup = augmented_views("coffee.png", 2, seed=61)
    return cat, cup


def test_a_still_scene_is_gated_and_a_change_is_embedded_on_the_very_next_frame(bundle_path, tmp_path, scenes):
    cat, cup = scenes
    frames = noisy(cat[1], 30, 1) + noisy(cup[1], 30, 2)
    daemon = make(bundle_path, tmp_path, frames, taught=(cat[0], cup[0]))
    views = Views(daemon)
    try:
        daemon.run()
        counts = daemon.gate.counts()
    finally:
        daemon.close()
    assert counts["gated"] >= 50 and counts["embedded"] <= 6, counts  # two still scenes: a handful of model runs
    first_cup = next(number for number, label in views.seen if label == "cup")
    assert first_cup == 31  # the very first cup frame: not one frame later than without the gate


def test_the_shown_class_follows_a_still_scene_as_fast_with_the_gate_as_without(bundle_path, tmp_path, scenes):
    """A gated frame votes its (unchanged) prediction: with smoothing, an object put down and left still is shown
    after the same frames as without the gate (it was shown only after gate.max_interval per vote, or never)."""
    from teachcam.edge import messages as m

    cat, cup = scenes
    frames = noisy(cat[1], 30, 5) + noisy(cup[1], 30, 6)
    switched = {}
    for gate in (3.0, 0.0):
        daemon = make(bundle_path, tmp_path / f"gate{gate}", frames, gate=gate, smoothing=5, taught=(cat[0], cup[0]))
        changes, original = [], daemon.event

        def record(event, *args, daemon=daemon, changes=changes, original=original, **kwargs):
            if isinstance(event, m.PredictionChanged):
                changes.append((daemon.stats.frames, event.label))
            return original(event, *args, **kwargs)

        daemon.event = record
        try:
            daemon.run()
            if gate:
                assert daemon.gate.counts()["gated"] >= 40  # the gate did spare most frames
        finally:
            daemon.close()
        switched[gate] = next(frame for frame, label in changes if label == "cup")
    assert switched[3.0] <= switched[0.0] + 1 and switched[0.0] <= 30 + 5, switched


def test_gating_off_is_todays_behaviour_exactly(bundle_path, tmp_path, scenes):
    cat, cup = scenes
    frames = noisy(cat[1], 10, 3) + noisy(cup[1], 10, 4)
    runs = []
    for gate in (0.0, None):
        folder = tmp_path / f"run{gate}"
        daemon = make(bundle_path, folder, frames, gate=gate or 0.0, taught=(cat[0], cup[0]))
        views = Views(daemon)
        try:
            if gate is None:  # no loop at all: one step per frame, as before the gate existed
                for frame in frames:
                    daemon.step(frame)
            else:
                daemon.run()
                assert daemon.gate.counts() == {"embedded": 20, "gated": 0, "capped": 0}
            assert len(views.seen) == 20
        finally:
            daemon.close()
        runs.append([label for _, label in views.seen])
    assert runs[0] == runs[1]


def test_an_enrollment_during_a_gated_stretch_enrolls_the_current_frame(bundle_path, tmp_path, scenes):
    cat, cup = scenes
    still = noisy(cat[1], 200, 5)
    daemon = make(bundle_path, tmp_path, still, fps=100.0, taught=(cat[0], cup[0]))
    try:
        import threading

        runner = threading.Thread(target=daemon.run)
        runner.start()
        assert wait_for(lambda: daemon.gate.gated >= 10)
        daemon.post(Enroll(label="cat", via="test"))
        assert wait_for(lambda: daemon.teacher.counts()["cat"] == 2)  # the taught one, and this frame
        daemon.stop()
        runner.join(10)
        newest = daemon.teacher.snapshot.examples[-1]
        digests = {thumbnail_digest(daemon.preprocess(frame)) for frame in still}
        assert newest.thumb in digests  # a frame of the still scene, embedded for the occasion
    finally:
        daemon.close()


def test_the_heartbeat_embeds_a_still_scene_every_so_often(bundle_path, tmp_path, scenes):
    cat, _ = scenes
    daemon = make(bundle_path, tmp_path, noisy(cat[1], 45, 6), fps=30.0, gate_max_interval=0.25)
    try:
        daemon.run()  # 1.5 s at 30 frames/s
        counts = daemon.gate.counts()
    finally:
        daemon.close()
    assert counts["embedded"] >= 5 and counts["gated"] >= 25, counts


def test_the_inference_cap_holds_apart_from_the_camera_rate(bundle_path, tmp_path, scenes):
    cat, cup = scenes
    frames = [f for pair in zip(noisy(cat[1], 30, 7), noisy(cup[1], 30, 8), strict=True) for f in pair]  # all change
    daemon = make(bundle_path, tmp_path, frames, fps=30.0, max_inference_fps=5.0)
    try:
        started = time.monotonic()
        daemon.run()  # about 2 s of camera at 30 frames/s
        elapsed = time.monotonic() - started
        counts = daemon.gate.counts()
    finally:
        daemon.close()
    assert counts["embedded"] <= 5 * elapsed + 1.5, (counts, elapsed)  # at most 5 model runs a second
    assert counts["embedded"] >= 3 and counts["capped"] >= 30, counts
    assert counts["embedded"] + counts["gated"] + counts["capped"] == len(frames)  # every frame accounted for


def test_status_counts_the_gated_frames(bundle_path, tmp_path, scenes):
    cat, _ = scenes
    daemon = make(bundle_path, tmp_path, noisy(cat[1], 20, 9))
    try:
        daemon.run()
        status = daemon.status()
    finally:
        daemon.close()
    assert status["gated"] >= 15 and status["embedded"] + status["gated"] == 20


# -- the Pi's health ---------------------------------------------------------------------------------

def fake_pi(tmp_path: Path, *, throttled: str | None, vcgencmd: str | None = None, temperature: str = "52123"):
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nRevision\t: c03115\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n")
    zone = sys_root / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(temperature + "\n")
    if throttled is not None:
        firmware = sys_root / "devices/platform/soc/soc:firmware"
        firmware.mkdir(parents=True)
        (firmware / "get_throttled").write_text(throttled + "\n")
    tool = None
    if vcgencmd is not None:
        tool = tmp_path / "vcgencmd"
        tool.write_text(f"#!/bin/sh\n[ \"$1\" = get_throttled ] && echo 'throttled={vcgencmd}'\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return str(proc), str(sys_root), str(tool) if tool else None


def test_doctor_reports_a_throttled_under_volted_pi_with_what_to_do(tmp_path):
    from teachcam.edge.devices.health import on_a_pi
    from teachcam.edge.tools.doctor import check_health

    on_a_pi.cache_clear()
    proc, sys_root, _ = fake_pi(tmp_path, throttled="50005")
    check = check_health(proc=proc, sys_root=sys_root, vcgencmd="/nonexistent")
    assert check.status == "warn" and "SoC 52.1 °C" in check.detail
    assert "under-voltage now" in check.detail and "throttling has occurred" in check.detail
    assert "power supply" in check.fix and "heatsink" in check.fix


def test_doctor_reads_vcgencmd_when_sysfs_has_no_flags_and_says_all_is_well(tmp_path):
    from teachcam.edge.devices.health import on_a_pi
    from teachcam.edge.tools.doctor import check_health

    on_a_pi.cache_clear()
    proc, sys_root, tool = fake_pi(tmp_path, throttled=None, vcgencmd="0x0")
    check = check_health(proc=proc, sys_root=sys_root, vcgencmd=tool)
    assert check.status == "ok" and check.detail == "SoC 52.1 °C; throttling: none, ever since boot" and not check.fix


def test_off_a_pi_the_doctor_claims_nothing(tmp_path):
    from teachcam.edge.devices.health import health, on_a_pi
    from teachcam.edge.tools.doctor import check_health

    on_a_pi.cache_clear()
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n")
    assert health(proc=str(proc)) == {}
    check = check_health(proc=str(proc))
    assert check.status == "ok" and check.detail.startswith("not a Raspberry Pi")
    on_a_pi.cache_clear()
    assert os.path.exists("/proc/cpuinfo")
