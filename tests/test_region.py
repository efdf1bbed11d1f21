"""The focus region (#28): the model looks at one part of the picture — set by the config, `--region`, the control
socket, `teachcam region`, and kept through restarts; bad regions are one line and change nothing."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import threading

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.config import load_config
from teachcam.edge.errors import ConfigError, ControlError
from teachcam.edge.link.client import ControlClient
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.ports import Port
from teachcam.edge.region import check_region, region_key
from tests.helpers import augmented_views, make_daemon, run_teachcam, wait_for

BAD = [([0, 0, 1.2, 1], "0 to 1"), ([0.5, 0.5, 0.4, 0.9], "x0 < x1"), ([0.1, 0.1, 0.12, 0.9], "at least 5%"),
       ([math.nan, 0, 1, 1], "0 to 1"), ([0, 0, 1], "four numbers"), (["a", "b", "c", "d"], "four numbers")]


def test_the_region_is_the_frame_for_the_preprocessing():
    pre = Preprocessor(256, 224, 224)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    assert np.array_equal(dataclasses.replace(pre, region=(0.0, 0.0, 1.0, 1.0))(frame), pre(frame))
    middle = dataclasses.replace(pre, region=(0.25, 0.25, 0.75, 0.75))(frame)
    cropped = pre(np.ascontiguousarray(frame[120:360, 160:480]))
    assert middle.shape == (224, 224, 3) and np.abs(middle.astype(int) - cropped).max() <= 1  # rounding only
    grey = Preprocessor(28, 28, 28, color_order="L")
    assert dataclasses.replace(grey, region=(0.5, 0.5, 1.0, 1.0))(frame).shape == (28, 28, 1)


@pytest.mark.parametrize("value, message", BAD)
def test_bad_regions_are_one_line(value, message):
    with pytest.raises(ValueError, match=message):
        check_region(value)
    with pytest.raises(ConfigError, match=f"camera.region: .*{message}" if not isinstance(value[0], str)
                       else r"camera.region\[0\] must be float"):
        load_config(None, {"camera.region": value})


def test_region_rules_and_keys():
    assert check_region(None) is None and check_region([]) is None and check_region("") is None
    assert check_region("0.1, 0.2, 0.6, 0.9") == (0.1, 0.2, 0.6, 0.9)
    assert region_key(None) == "whole" and region_key((0.5, 0, 1, 1)) == "0.5,0,1,1"


def png(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    half = [np.asarray(Image.fromarray(x).resize((320, 480))) for x in (left, right)]
    return np.concatenate(half, axis=1)


def test_the_region_decides_what_the_model_sees_and_is_kept(bundle_path, tmp_path, factory):
    """A cat on the left of the picture and a coffee cup on the right: the region says which one it sees; set
    through the socket at once, recorded on camera examples, counted when it changes, kept through a restart."""
    cats, cups = augmented_views("chelsea.png", 4, seed=81), augmented_views("coffee.png", 4, seed=82)
    frames = [side_by_side(c, k) for c, k in zip(cats, cups, strict=True)]
    daemon = make_daemon(bundle_path, tmp_path, factory, frames)
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    try:
        with ControlClient(daemon.control.path, timeout=30) as client:
            for label, views in (("cat", cats), ("coffee", cups)):  # uploads: whole pictures, no region
                for view in views[:3]:
                    client.request("enroll_image", label=label, image=png(view))
            assert client.request("status")["region"] is None

            for region, expected in (([0, 0, 0.5, 1], "cat"), ([0.5, 0, 1, 1], "coffee")):
                reply = client.request("set_region", region=region)
                assert reply == {"region": region, "other_region": 0, "other_ids": []}
                assert wait_for(lambda e=expected: client.request("status")["shown"] == e, timeout=20), expected
            assert json.loads((tmp_path / "store" / "focus.json").read_text()) == {"region": [0.5, 0, 1, 1]}

            taken = client.request("enroll", label="coffee")  # a camera example: its region is recorded
            examples = {e["id"]: e for c in client.request("classes")["classes"] for e in c["examples"]}
            assert examples[taken["example"]]["region"] == "0.5,0,1,1"
            assert {e["region"] for i, e in examples.items() if i != taken["example"]} == {""}  # uploads

            before = (tmp_path / "store" / "focus.json").read_bytes()
            for value, message in BAD:
                with pytest.raises(ControlError, match=f"set_region: region: .*{message}"):
                    client.request("set_region", region=value)
            with pytest.raises(ControlError, match="list of four numbers"):
                client.request("set_region", region="0,0,1,1")
            assert client.request("status")["region"] == [0.5, 0, 1, 1]
            assert (tmp_path / "store" / "focus.json").read_bytes() == before

            moved = client.request("set_region", region=[0, 0, 0.5, 1])
            assert moved["other_region"] == 1 and moved["other_ids"] == [taken["example"]]  # kept, and said
            assert client.request("set_region", region=None)["other_ids"] == [taken["example"]]
            client.request("set_region", region=[0, 0, 0.5, 1])
    finally:
        daemon.stop()
        loop.join(timeout=10)
        daemon.close()

    again = make_daemon(bundle_path, tmp_path, factory, frames)  # a restart keeps the region set at run time
    try:
        assert again.region == (0.0, 0.0, 0.5, 1.0) and again.frame_preprocess.region == again.region
        assert again.grabber.prepare.region == again.region
        with ControlClient(again.control.path, timeout=30) as client:
            thread = threading.Thread(target=again.run, daemon=True)
            thread.start()
            assert client.request("set_region", reset=True)["region"] is None  # the config's: none
            assert not (tmp_path / "store" / "focus.json").exists()
    finally:
        again.stop()
        thread.join(timeout=10)
        again.close()


def test_the_config_and_the_cli_set_it(bundle_path, tmp_path, factory):
    config = load_config(None, {"camera.region": [0.1, 0.2, 0.6, 0.9]})
    assert config.camera.region == (0.1, 0.2, 0.6, 0.9)
    result = run_teachcam("run", "--region", "0.5,0.5,0.4,0.9", "--frames", "1")
    assert result.returncode == 2 and "x0 < x1" in result.stderr and "Traceback" not in result.stderr
    frames = augmented_views("chelsea.png", 2, seed=83)

    class Views(Port):  # what the screen, the terminal and the page are shown
        name, last = "views", None

        def update(self, view, frame=None):
            Views.last = view

    daemon = make_daemon(bundle_path, tmp_path, factory, frames, ports=[Views()],
                         camera=dataclasses.replace(config.camera, source="demo", region=(0.25, 0.25, 0.75, 0.75)))
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    try:
        assert daemon.region == (0.25, 0.25, 0.75, 0.75)
        shown = run_teachcam("region", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout) == {"region": [0.25, 0.25, 0.75, 0.75]}
        changed = run_teachcam("region", "0,0,0.5,0.5")
        assert changed.returncode == 0 and "0,0 to 0.5,0.5 (25% of the picture)" in changed.stdout, changed.stderr
        assert wait_for(lambda: daemon.region == (0.0, 0.0, 0.5, 0.5))
        assert wait_for(lambda: Views.last is not None and Views.last.region == (0.0, 0.0, 0.5, 0.5), timeout=10)
        bad = run_teachcam("region", "0,0,2,1")
        assert bad.returncode == 2 and "0 to 1" in bad.stderr and daemon.region == (0.0, 0.0, 0.5, 0.5)
        assert "the whole picture" in run_teachcam("region", "--whole").stdout
        assert json.loads(run_teachcam("region", "--reset", "--json").stdout) == \
            {"region": [0.25, 0.25, 0.75, 0.75], "other_region": 0, "other_ids": []}
    finally:
        daemon.stop()
        loop.join(timeout=10)
        daemon.close()


@pytest.mark.parametrize("kind", ["images", "file", "demo"])
def test_every_source_is_cropped_to_the_region(bundle_path, tmp_path, kind):
    """Webcams, files, folders and the demo camera: the region is cut in the preprocessing, whatever delivers."""
    from teachcam.edge.daemon.loop import Daemon

    scene = np.zeros((480, 640, 3), np.uint8)
    scene[:, :320, 0], scene[:, 320:, 2] = 220, 220  # red | blue
    if kind == "images":
        (tmp_path / "cam").mkdir()
        Image.fromarray(scene).save(tmp_path / "cam" / "0.png")
        source = f"images:{tmp_path / 'cam'}"
    elif kind == "file":
        cv2 = pytest.importorskip("cv2")
        writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
        for _ in range(5):
            writer.write(scene[:, :, ::-1].copy())
        writer.release()
        source = f"file:{tmp_path / 'clip.avi'}"
    else:
        source = "demo"
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "camera": {"source": source, "region": [0.5, 0.0, 1.0, 1.0]},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"}})
    daemon = Daemon(config, keyboard=False, stdout=io.StringIO()).start()
    try:
        frame = daemon.grabber.latest(timeout=10.0)
        assert frame is not None and frame.pixels is not None
        assert np.array_equal(frame.pixels, daemon.frame_preprocess(frame.image))
        assert not np.array_equal(frame.pixels, daemon.preprocess(frame.image))
        if kind != "demo":
            assert frame.pixels[..., 2].mean() > 180 and frame.pixels[..., 0].mean() < 40  # the right half only
    finally:
        daemon.close()
