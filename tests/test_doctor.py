"""`teachcam doctor` reports what works, what does not, and how to fix it."""

from __future__ import annotations

import json

from tests.helpers import run_teachcam


def test_doctor_on_a_working_setup(bundle_path, tmp_path):
    result = run_teachcam("doctor", "--bundle", bundle_path, "--store", tmp_path / "store", "--source", "demo", "--json")
    assert result.returncode == 0, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert set(checks) >= {"runtime", "bundle", "edgetpu", "store", "camera", "gpio", "i2c", "permissions"}
    assert checks["bundle"]["status"] == "ok" and "every sha256 matches" in checks["bundle"]["detail"]
    assert checks["camera"]["status"] == "ok" and "640x480" in checks["camera"]["detail"]
    assert checks["runtime"]["detail"].startswith("ai_edge_litert")
    assert result.stderr == ""


def test_doctor_says_what_is_wrong_and_how_to_fix_it(tmp_path):
    result = run_teachcam("doctor", "--bundle", tmp_path / "nope", "--store", tmp_path / "store",
                          "--source", f"file:{tmp_path / 'missing.mp4'}")
    assert result.returncode == 1
    assert "✗ bundle       bundle not found" in result.stdout
    assert "✗ camera       video file not found" in result.stdout
    assert result.stdout.count("fix:") >= 2


def test_the_permissions_check_names_groups_this_system_does_not_have(monkeypatch):
    # Debian or Ubuntu on a Pi: no gpio or i2c group (install-pi then leaves them out of the unit: 216/GROUP otherwise)
    from teachcam.edge.tools import doctor

    monkeypatch.setattr(doctor, "_group_exists", lambda name: name == "video")
    monkeypatch.setattr(doctor, "_user_groups", lambda: {"video"})
    check = doctor.check_groups()
    assert check.status == "warn"
    assert check.detail.endswith("can use video; no group gpio or i2c on this system (not Raspberry Pi OS?)")
    assert "udev rules" in check.fix
    monkeypatch.setattr(doctor, "_group_exists", lambda name: True)
    monkeypatch.setattr(doctor, "_user_groups", lambda: {"video", "gpio", "i2c"})
    assert doctor.check_groups().status == "ok"
