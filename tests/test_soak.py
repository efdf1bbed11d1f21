"""A 10,000-frame soak of the real `teachcam run` process: resident memory stays flat."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from teachcam.edge.tools.bench import rss_mb
from tests.helpers import augmented_views


@pytest.mark.slow
def test_ten_thousand_frames_with_flat_memory(bundle_path, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(augmented_views("coffee.png", 6, seed=1) + augmented_views("chelsea.png", 6, seed=2)):
        Image.fromarray(frame).resize((342, 256)).save(folder / f"{i:02d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", str(bundle_path), "--store",
                             str(tmp_path / "store"), "--source", f"images:{folder}", "--frames", "10000", "--fps",
                             "2000", "--json", "--no-gpio", "--classes", "cat,coffee"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    samples = []
    started = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.5)
        rss = rss_mb(proc.pid)
        if rss is None:
            break
        samples.append((time.monotonic() - started, rss))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    settled = [rss for t, rss in samples if t > 3.0]
    assert len(settled) >= 4, f"the run was too short to judge ({samples})"
    start, end = settled[0], max(settled[-3:])
    print(f"\nsoak: 10,000 frames in {samples[-1][0]:.0f} s, RSS {start:.1f} MB after warm-up, {end:.1f} MB at the end")
    assert end - start < 8.0, f"resident memory grew from {start:.1f} MB to {end:.1f} MB"
    assert end < 200
