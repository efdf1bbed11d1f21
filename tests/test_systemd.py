"""The systemd unit: valid for systemd, hardened, and still able to reach the camera, GPIO and I2C."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from teachcam.edge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "teachcam.service"


def options() -> dict[str, list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_unit_options():
    o = options()
    assert o["Service.Type"] == ["notify"]
    assert o["Service.WatchdogSec"] == ["30"]
    assert o["Service.Restart"] == ["on-failure"]
    assert o["Unit.StartLimitBurst"] == ["5"] and o["Unit.StartLimitIntervalSec"] == ["300"]
    assert o["Service.User"] == ["teachcam"]
    assert set(o["Service.SupplementaryGroups"][0].split()) >= {"video", "gpio", "i2c"}
    assert o["Service.StateDirectory"] == ["teachcam"]
    assert o["Service.ConfigurationDirectory"] == ["teachcam"]
    assert "--config /etc/teachcam/teachcam.toml" in o["Service.ExecStart"][0]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "DevicePolicy": "closed"}.items():
        assert o[f"Service.{key}"] == [value], key
    allowed = " ".join(o["Service.DeviceAllow"])
    for device in ("char-video4linux", "char-media", "char-gpiochip", "char-i2c", "char-usb_device", "char-apex",
                   "char-drm", "/dev/fb0"):
        assert device in allowed
    assert "PrivateDevices" not in " ".join(o), "PrivateDevices would hide the camera and GPIO"
    # Off the network: the control socket is a Unix socket in the unit's runtime directory.
    assert o["Service.PrivateNetwork"] == ["yes"] and o["Service.RuntimeDirectory"] == ["teachcam"]
    families = " ".join(o["Service.RestrictAddressFamilies"]).split()
    assert "AF_UNIX" in families and not {"AF_INET", "AF_INET6", "AF_PACKET"} & set(families)


def _unit_with_stub_binary(tmp_path, source: Path = UNIT) -> Path:
    stub = tmp_path / "teachcam"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/teachcam/venv/bin/teachcam", str(stub)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    # ExecStart's binary is created by scripts/install-pi on the Pi; here a stub stands at its place.
    unit = _unit_with_stub_binary(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_exposure_is_safe(tmp_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(_unit_with_stub_binary(tmp_path))],
                            capture_output=True, text=True)
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    score = float(line.split(":")[1].split()[0])
    assert score <= 1.0, line  # "OK" is below 4.0, "SAFE" below 2.0; this unit holds 0.8


def test_example_config_loads():
    config = load_config(ROOT / "systemd" / "teachcam.toml")
    assert config.camera.source == "picamera2" and config.store == "/var/lib/teachcam/store"
    assert len(config.buttons.pins) == len(config.classes) == len(config.leds.pins)


MQTT_UNIT = ROOT / "systemd" / "teachcam-mqtt.service"


WEB_UNIT = ROOT / "systemd" / "teachcam-web.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("source", [MQTT_UNIT, WEB_UNIT], ids=["mqtt", "web"])
def test_the_network_units_verify_and_are_exposed_little(tmp_path, source):
    unit = _unit_with_stub_binary(tmp_path, source)
    # teachcam.service is referenced (Wants=/After=): verify it next to it
    _unit_with_stub_binary(tmp_path, UNIT)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                            text=True)
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    assert float(line.split(":")[1].split()[0]) <= 2.0, line


def test_the_mqtt_bridge_unit_has_the_network_and_nothing_else():
    text = MQTT_UNIT.read_text()
    options = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            options.setdefault(key, []).append(value)
    families = " ".join(options["RestrictAddressFamilies"]).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} == set(families)  # the broker, and the control socket
    assert options["PrivateDevices"] == ["yes"] and "DeviceAllow" not in options  # no camera, GPIO or I2C
    assert options["InaccessiblePaths"] == ["-/var/lib/teachcam"]  # the store is not even readable
    assert options["SupplementaryGroups"] == ["teachcam"] and options["DynamicUser"] == ["yes"]
    assert "teachcam mqtt" in options["ExecStart"][0]


def test_the_web_unit_has_the_network_a_read_only_store_and_no_devices():
    options = {}
    for line in WEB_UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            options.setdefault(key, []).append(value)
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} == set(" ".join(options["RestrictAddressFamilies"]).split())
    assert options["PrivateDevices"] == ["yes"] and "DeviceAllow" not in options
    assert "-/var/lib/teachcam" in options["ReadOnlyPaths"] and options["ProtectSystem"] == ["strict"]
    assert options["StateDirectory"] == ["teachcam-web"]  # the pairing token, 0700
    assert "teachcam web" in options["ExecStart"][0]
    # bounded: a Pi with 512 MB outlives any upload (the kernel stops this process, never the daemon)
    assert options["MemoryMax"] == ["256M"] and options["MemoryHigh"] == ["160M"]
