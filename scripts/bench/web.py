#!/usr/bin/env python3
"""What the teaching page costs and how quickly it answers (#12).

The real Daemon in this process (demo frames of 342x256 looped, unpaced, 60 examples), `teachcam web` as its
own process on 127.0.0.1, and "pages" made of what a page opens: the MJPEG live view and the websocket.

1. Daemon frames/s with one page open vs none — alternating rounds, median ratio; the daemon's JPEG
   encodes per second with 1 and with 3 pages open (one encode per preview frame, whoever watches).
2. Pressing "add" (POST /api/enroll) → the reply, which comes once the example is durable: p50/p95.
3. A prediction change in the daemon (its event's timestamp) → the page's websocket: p50/p95.
4. Page weight of a first load (HTML, CSS, JS, the first API calls, as sent to a browser that takes gzip; not the
   stream) and the live view's
   bandwidth at the defaults (480 px, 10 frames/s).
5. `systemd-analyze security --offline=true systemd/teachcam-web.service`.

Usage: scripts/bench/web.py [--bundle build/default-bundle] [--seconds 8] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import background_daemon, demo_frames, enroll  # noqa: E402  (scripts/bench/daemon.py)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, socket_path: Path, store: Path):
        self.port, self.token_file = free_port(), tmp / "token"
        self.proc = subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "web", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--token-file", str(self.token_file), "--socket", str(socket_path),
                                      "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if "serving on" not in self.proc.stdout.readline():
            raise SystemExit("teachcam web did not start")
        self.token = self.token_file.read_text().strip()
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.05)

    def get(self, path: str) -> bytes:
        """The bytes on the wire, as a browser asks (gzip welcome; urllib leaves them compressed)."""
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}",
                                                                   "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST", headers={
            "Authorization": f"Bearer {self.token}", "X-Teachcam": "1", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


class Page(threading.Thread):
    """What an open page holds: the MJPEG live view (read to the end) and the websocket (latency of predictions)."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.stop_event = server, threading.Event()
        self.stream_bytes, self.stream_frames, self.latencies, self.started = 0, 0, [], time.monotonic()

    def run(self) -> None:
        threading.Thread(target=self._stream, daemon=True).start()
        asyncio.run(self._ws())

    def _stream(self) -> None:
        request = urllib.request.Request(self.server.base + "/stream.mjpg",
                                         headers={"Authorization": f"Bearer {self.server.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            while not self.stop_event.is_set():
                chunk = response.read1(65536)
                if not chunk:
                    break
                self.stream_bytes += len(chunk)
                self.stream_frames += chunk.count(b"--frame")

    async def _ws(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.server.base + "/ws", headers={
                    "Authorization": f"Bearer {self.server.token}", "Origin": self.server.base}) as ws:
                while not self.stop_event.is_set():
                    try:
                        message = await ws.receive_json(timeout=0.5)
                    except TimeoutError:
                        continue
                    except TypeError:
                        break
                    if message.get("type") == "event" and message.get("event") == "prediction":
                        self.latencies.append((time.time() - message["time"]) * 1e3)


def run_round(args, store: Path, frames: list, tmp: Path, pages: int, r: int) -> dict:
    socket_path = tmp / f"r{r}p{pages}.sock"
    with background_daemon(args.bundle, store, frames, args.threads, socket_path) as daemon:
        server = Server(tmp, socket_path, store) if pages else None
        opened = [Page(server) for _ in range(pages)]
        for page in opened:
            page.start()
        time.sleep(1.5)
        frames0, encodes0, started = daemon.stats.frames, daemon.control.jpeg_encodes, time.perf_counter()
        bytes0 = [p.stream_bytes for p in opened]
        time.sleep(args.seconds)
        elapsed = time.perf_counter() - started
        result = {"fps": (daemon.stats.frames - frames0) / elapsed,
                  "jpeg_encodes_per_s": (daemon.control.jpeg_encodes - encodes0) / elapsed,
                  "stream_kbps": [(p.stream_bytes - b) * 8 / 1e3 / elapsed
                                  for p, b in zip(opened, bytes0, strict=True)],
                  "latencies_ms": [x for p in opened for x in p.latencies]}
        for page in opened:
            page.stop_event.set()
        if server:
            server.stop()
    return result


def answers(args, store: Path, tmp: Path) -> dict:
    """Add → durable, page weight and bandwidth at the defaults (camera paced at 30 frames/s)."""
    socket_path = tmp / "answers.sock"
    with background_daemon(args.bundle, store, demo_frames(90, (640, 480)), args.threads, socket_path, fps=30.0,
                           unpaced=False):
        server = Server(tmp, socket_path, store)
        try:
            weight = {path: len(server.get(path)) for path in ("/", "/static/app.js", "/static/style.css",
                                                               "/api/session", "/api/classes", "/api/explain")}
            adds = []
            for i in range(args.adds):
                started = time.perf_counter()
                result = server.post("/api/enroll", {"label": ("cat", "coffee", "rocket")[i % 3]})
                adds.append((time.perf_counter() - started) * 1e3)
                assert "example" in result, result
            page = Page(server)
            page.start()
            time.sleep(1.0)
            before, frames_before, started = page.stream_bytes, page.stream_frames, time.perf_counter()
            time.sleep(5.0)
            elapsed = time.perf_counter() - started
            page.stop_event.set()
            return {"page_weight_bytes": sum(weight.values()), "page_weight": weight,
                    "add_ms": {"p50": float(np.percentile(adds, 50)), "p95": float(np.percentile(adds, 95)),
                               "count": len(adds)},
                    "stream_kbps": (page.stream_bytes - before) * 8 / 1e3 / elapsed,
                    "stream_fps": (page.stream_frames - frames_before) / elapsed}
        finally:
            server.stop()


def exposure() -> str:
    if not shutil.which("systemd-analyze"):
        return "systemd-analyze not installed"
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "teachcam"
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        unit = Path(tmp) / "teachcam-web.service"
        unit.write_text((ROOT / "systemd" / "teachcam-web.service").read_text()
                        .replace("/opt/teachcam/venv/bin/teachcam", str(stub)))
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                             text=True).stdout
    line = next((x for x in out.splitlines() if "Overall exposure level" in x), "")
    return line.split(":", 1)[1].strip() if line else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adds", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "store60"
        enroll(store, args.bundle, 60)
        frames = demo_frames(300, (342, 256))
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
            row = {pages: run_round(args, store, frames, tmp, pages, r) for pages in (0, 1, 3)}
            rounds.append(row)
        print("add → durable, page weight, bandwidth…", file=sys.stderr)
        other = answers(args, tmp / "store-answers", tmp)
    latencies = [x for row in rounds for x in row[1]["latencies_ms"] + row[3]["latencies_ms"]]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "ratio_one_page": float(np.median([row[1]["fps"] / row[0]["fps"] for row in rounds])),
           "ratio_three_pages": float(np.median([row[3]["fps"] / row[0]["fps"] for row in rounds])),
           "rounds": [{str(k): {"fps": v["fps"], "jpeg_encodes_per_s": v["jpeg_encodes_per_s"]} for k, v in row.items()}
                      for row in rounds],
           "jpeg_encodes_per_s": {"one_page": float(np.median([row[1]["jpeg_encodes_per_s"] for row in rounds])),
                                  "three_pages": float(np.median([row[3]["jpeg_encodes_per_s"] for row in rounds]))},
           "prediction_to_page_ms": {"p50": float(np.percentile(latencies, 50)) if latencies else None,
                                     "p95": float(np.percentile(latencies, 95)) if latencies else None,
                                     "count": len(latencies)},
           **other, "exposure": exposure()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"teachcam web — {out['machine']}, demo frames 342x256 looped (unpaced), 60 examples, {args.seconds:.0f} s "
          f"per round, {args.rounds} alternating rounds")
    for row in rounds:
        print(f"  no page {row[0]['fps']:6.1f} fps | 1 page {row[1]['fps']:6.1f} fps "
              f"({row[1]['fps'] / row[0]['fps']:.3f}×, {row[1]['jpeg_encodes_per_s']:.1f} JPEG/s) | 3 pages "
              f"{row[3]['fps']:6.1f} fps ({row[3]['fps'] / row[0]['fps']:.3f}×, {row[3]['jpeg_encodes_per_s']:.1f} JPEG/s)")
    e = out["jpeg_encodes_per_s"]
    print(f"  median: one page {out['ratio_one_page']:.3f}× no page (target ≥ 0.9), three pages "
          f"{out['ratio_three_pages']:.3f}×; JPEG encodes/s with 1 page {e['one_page']:.1f}, with 3 {e['three_pages']:.1f}")
    p = out["prediction_to_page_ms"]
    if p["count"]:
        print(f"  prediction change → page (websocket) p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms ({p['count']})")
    a = out["add_ms"]
    print(f"  add → durable (POST /api/enroll, 30 frames/s camera) p50 {a['p50']:.0f} ms, p95 {a['p95']:.0f} ms "
          f"({a['count']})")
    print(f"  first load {out['page_weight_bytes'] / 1024:.1f} KB (HTML+CSS+JS+API); live view "
          f"{out['stream_kbps']:.0f} kbit/s at {out['stream_fps']:.1f} frames/s (defaults: 480 px, 10/s)")
    print(f"  systemd-analyze security teachcam-web.service: {out['exposure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
