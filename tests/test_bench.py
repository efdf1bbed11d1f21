"""`teachcam bench` reports every stage with the real daemon."""

from __future__ import annotations

import json

from tests.conftest import run_teachcam


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
