"""The .pth reader: real torchvision weights load; anything that is not just tensors is refused."""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from teachcam.convert.backbones import find_offline_weights
from teachcam.convert.torch_weights import _LEGACY_MAGIC, read_state_dict
from teachcam.edge.errors import CheckpointError


def test_reads_torchvision_mobilenet_v2_checkpoint():
    state = read_state_dict(find_offline_weights())
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.0.weight"].dtype == np.float32
    assert np.isfinite(state["classifier.1.weight"]).all()


def _legacy_file(path, payload: bytes):
    header = b"".join(pickle.dumps(x, protocol=2) for x in (_LEGACY_MAGIC, 1001, {"little_endian": True}))
    path.write_bytes(header + payload)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    _legacy_file(weights, pickle.dumps({"x": _RunsCode(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os)\.system"):
        read_state_dict(weights)
    assert not marker.exists()


def test_refuses_builtins_eval_inside_a_zip_checkpoint(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    weights = tmp_path / "evil.pt"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load (builtins|__builtin__)\.eval"):
        read_state_dict(weights)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    data = find_offline_weights().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_state_dict(cut)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello, not a pickle")
    with pytest.raises(CheckpointError):
        read_state_dict(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.fixture
def fake_torch(monkeypatch):
    """A stand-in `torch` module so the test can *write* a zip checkpoint the way torch does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = FloatStorage, _rebuild_tensor_v2, utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def test_reads_the_zip_layout(tmp_path, fake_torch):
    values = np.arange(6, dtype=np.float32)

    class Tensor:
        def __reduce__(self):
            storage = ("storage", fake_torch.FloatStorage, "0", "cpu", 6)
            return (sys.modules["torch._utils"]._rebuild_tensor_v2, (storage, 0, (2, 3), (3, 1), False, {}))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    weights = tmp_path / "zip.pt"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", values.tobytes())
    state = read_state_dict(weights)
    np.testing.assert_array_equal(state["w"], values.reshape(2, 3))
