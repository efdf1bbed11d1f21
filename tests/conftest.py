"""Shared fixtures: one real bundle per test session, built by the real `teachcam convert`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import run_teachcam

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    """The default bundle (MobileNetV2, torchvision weights, int8 + float32), built once per session.

    Set TEACHCAM_TEST_BUNDLE to an existing bundle to skip the build while iterating locally.
    """
    existing = os.environ.get("TEACHCAM_TEST_BUNDLE")
    if existing:
        return Path(existing)
    out = tmp_path_factory.mktemp("bundle") / "default"
    result = run_teachcam("convert", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(autouse=True)
def own_control_socket(tmp_path, monkeypatch):
    """Every test's daemons (and CLIs) use a control socket of their own, never the machine's."""
    monkeypatch.setenv("TEACHCAM_SOCKET", str(tmp_path / "control.sock"))


@pytest.fixture
def factory():
    """gpiozero's mock pin factory, with PWM pins (LED brightness)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


@pytest.fixture
def bundle_copy(bundle_path, tmp_path) -> Path:
    """A private copy of the default bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(bundle_path, target)
    return target
