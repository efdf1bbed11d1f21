"""The daemon configuration: a typo or an inconsistent setup is one error naming the key."""

from __future__ import annotations

import pytest

from teachcam.edge.config import load_config
from teachcam.edge.errors import ConfigError
from tests.helpers import run_teachcam


@pytest.mark.parametrize("overrides, message", [
    ({"camra": {"source": "demo"}}, "unknown key camra"),
    ({"camera": {"sourc": "demo"}}, "unknown key camera.sourc"),
    ({"camera": {"fps": "fast"}}, "camera.fps must be float"),
    ({"smoothing": True}, "smoothing must be a number"),
    ({"buttons": {"pins": [5, 5, 6, 7]}}, "GPIO5 is already used by buttons.pins"),
    ({"leds": {"pins": [5, 16, 20, 21]}}, "leds.pins: GPIO5 is already used"),
    ({"classes": ["a", "b", "c"], "buttons": {"pins": [5, 6]}}, "every class needs its own button"),
    ({"classes": ["Mug", "mug"]}, "two class names are the same"),
    ({"mode": "magic"}, "mode = 'magic'"),
    ({"buttons": {"clear_pin": 40}}, "not a Raspberry Pi header GPIO"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_file_errors_are_one_line_and_nothing_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[camera]\nsource = "demo"\nfsp = 30\n')

    result = run_teachcam("run", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.strip() == ("teachcam: error: unknown key camera.fsp (known: fps, gate, gate_max_interval, "
                                     "height, loop, max_inference_fps, region, source, width)")
    bad.write_text("this is = not toml ==")
    assert "is not valid TOML" in run_teachcam("run", "--config", bad).stderr


def test_the_cli_starts_for_a_user_without_a_home():
    # systemd's DynamicUser= (the web and MQTT units) on a system without nss-systemd: no $HOME, no passwd entry.
    # Importing the CLI once raised "Could not determine home directory" there, and both units died at start.
    from tests.helpers import run_python_as

    result = run_python_as(61234, 61234, "from teachcam.edge.cli import main; from teachcam.edge import config; "
                                         "print(config.DEFAULT_STORE)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/var/lib/teachcam/store"
