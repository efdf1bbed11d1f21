"""`teachcam bench` reports every stage with the real daemon."""

from __future__ import annotations

import json

from tests.helpers import run_teachcam


def test_bench_reports_stages_fps_runtime_and_memory(bundle_path):
    result = run_teachcam("bench", "--bundle", bundle_path, "--frames", "40", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["stages"]) == {"capture", "preprocess", "invoke", "classify", "output"}
    assert all(s["p95_ms"] >= s["p50_ms"] >= 0 for s in report["stages"].values())
    assert report["stages"]["invoke"]["p50_ms"] > 0
    assert report["frames"] == 40 and report["fps"] > 0
    assert report["interpreter"].startswith("ai_edge_litert") and report["delegate"].startswith("cpu")
    assert report["embedder"] == "int8" and report["model_mb"] > 1 and 20 < report["rss_mb"] < 400
    text = run_teachcam("bench", "--bundle", bundle_path, "--frames", "20")
    assert "p50 ms" in text.stdout and "frames/s end to end" in text.stdout


def test_bench_on_a_camera_that_delivers_nothing_stops_with_one_clear_error(bundle_path, tmp_path, monkeypatch):
    import pytest

    from teachcam.edge.errors import CameraError
    from teachcam.edge.tools import bench

    monkeypatch.setattr(bench, "FIRST_FRAME_TIMEOUT", 1.0)
    (tmp_path / "empty").mkdir()
    config = bench.bench_config(str(bundle_path), f"images:{tmp_path / 'empty'}", None, "knn", None)
    with pytest.raises(CameraError, match=r"no frame from images:.* in 1 s \(no images match .*\); check the --source"):
        bench.run_bench(config, 10)
