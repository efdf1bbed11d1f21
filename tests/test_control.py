"""The control socket with a real daemon process: the CLI through it, fuzzing, a kill mid-enrollment, other users."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from teachcam.edge.config import DEFAULT_STORE, DaemonConfig, load_config
from teachcam.edge.errors import ControlError
from teachcam.edge.link.client import ControlClient
from tests.helpers import RunningDaemon, augmented_views, run_python_as, run_teachcam, save_views, wait_for


@pytest.fixture
def daemon(bundle_path, tmp_path):
    running = RunningDaemon(bundle_path, tmp_path, camera=tmp_path / "camera")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def camera_views(tmp_path):
    save_views(tmp_path / "camera", "chelsea.png", 4, seed=40)  # what the daemon's camera sees: a cat


@pytest.mark.slow
def test_the_cli_teaches_the_running_daemon(daemon, tmp_path):
    mug = save_views(tmp_path / "upload", "chelsea.png", 2, seed=41)  # other views of the object in front of it
    result = run_teachcam("enroll", "--label", "mug", *mug)
    assert result.returncode == 0, result.stderr
    assert "through the running daemon" in result.stdout and "mug: 2" in result.stdout
    listing = run_teachcam("store", "list", "--json")
    assert json.loads(listing.stdout)["classes"] == {"mug": 2}
    assert wait_for(lambda: daemon.status()["shown"] == "mug", timeout=20)  # its camera now says mug
    with ControlClient(daemon.socket) as client:  # thumbnails are readable without opening the store
        (mug_class,) = client.request("classes")["classes"]
        thumb = mug_class["examples"][0]["thumb"]
        png = base64.b64decode(client.request("thumbnail", thumb=thumb)["png"])
        assert Image.open(io.BytesIO(png)).size == (224, 224)
        with pytest.raises(ControlError, match="thumbnail id is the 64 hex digits"):
            client.request("thumbnail", thumb="../../etc/passwd")
    status = json.loads(run_teachcam("status", "--json").stdout)
    assert status["classes"] == {"mug": 2} and status["camera_ok"] and status["kernels"] == "xnnpack"
    assert "camera    images:" in run_teachcam("status").stdout
    log = daemon.stop()
    assert '"event": "enrolled"' not in log  # JSON lines go to stdout; the log has no traceback either
    assert "Traceback" not in log


@pytest.mark.slow
def test_killing_the_daemon_mid_enrollment_loses_nothing_acknowledged(bundle_path, tmp_path):
    running = RunningDaemon(bundle_path, tmp_path, camera=tmp_path / "camera")
    image = base64.b64encode(save_views(tmp_path / "upload", "coffee.png", 1, seed=42)[0].read_bytes()).decode()
    acknowledged = []

    def enroll_forever():
        try:
            with ControlClient(running.socket, timeout=10) as client:
                while True:
                    acknowledged.append(client.request("enroll_image", label="cup", image=image)["count"])
        except (ControlError, OSError, ValueError):
            pass  # the daemon died under us

    thread = threading.Thread(target=enroll_forever)
    thread.start()
    assert wait_for(lambda: len(acknowledged) >= 15, timeout=60)
    time.sleep(random.uniform(0.0, 0.2))
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=10)
    thread.join(timeout=20)
    from teachcam.edge.teaching.teacher import Teacher

    with Teacher.open(running.store) as teacher:
        assert teacher.counts()["cup"] >= max(acknowledged) >= 15


def store_digest(store: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in store.rglob("*") if p.is_file() and p.name != "lock"):
        digest.update(str(path.relative_to(store)).encode() + path.read_bytes())
    return digest.hexdigest()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


BAD_LINES = [
    b"\x00\xff\xfe garbage \x9c\n", b"{not json\n", b"[1, 2, 3]\n", b'"just a string"\n', b"{}\n",
    b'{"op": "no_such_op"}\n', b'{"op": 42}\n', b'{"id": {"x": 1}, "op": "status"}\n',
    b'{"op": "enroll", "label": 5}\n', b'{"op": "enroll", "label": ""}\n', b'{"op": "enroll", "index": "two"}\n',
    b'{"op": "rename_class", "old": "mug"}\n', b'{"op": "remove_class", "label": "no such class"}\n',
    b'{"op": "enroll_image", "label": "x", "image": "%%% not base64 %%%"}\n',
    b'{"op": "enroll_image", "label": "x", "image": "aGVsbG8gd29ybGQ="}\n',  # "hello world": not an image
    b'{"op": "enroll_image", "label": "a/b", "image": "aGVsbG8="}\n', b'{"op": "thumbnail", "thumb": "../../etc/passwd"}\n',
    b'{"op": "subscribe", "frames": "yes"}\n', b'{"op": "enroll", "label": "x", "evil": true}\n',
    b'{"op": "hello", "protocol": 1}\n', b'{"op": "ping"}\n',
]


@pytest.mark.slow
def test_fuzzing_the_socket_never_hurts_the_daemon(daemon, tmp_path):
    mug = save_views(tmp_path / "upload", "chelsea.png", 1, seed=43)
    assert run_teachcam("enroll", "--label", "mug", *mug).returncode == 0
    before, frames_before = store_digest(daemon.store), daemon.status()["frames"]
    rss_before = rss_kb(daemon.proc.pid)
    totals = {"lines": 0, "replies": 0, "closed_oversized": 0}
    lock = threading.Lock()

    def client(seed: int, lines: int):
        rng = random.Random(seed)
        sent = replies = 0
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(daemon.socket))
        reader = sock.makefile("rb")
        reader.readline()  # hello
        while sent < lines:
            kind = rng.random()
            if kind < 0.004:  # a 10 MB line: one error reply, then the connection is closed
                sock.sendall(b"x" * (10 * 1024 * 1024) + b"\n")
                reply = json.loads(reader.readline())
                assert reply["ok"] is False and "longer than" in reply["error"]
                assert reader.readline() == b""
                with lock:
                    totals["closed_oversized"] += 1
                sent += 1
                replies += 1
            elif kind < 0.01:  # half a line, then gone
                sock.sendall(b'{"op": "sta')
                sent += 1
            elif kind < 0.015:  # an abrupt disconnect right after a request
                sock.sendall(b'{"id": 1, "op": "status"}\n')
                sent += 1
                replies += 1  # counted as answered: the server wrote it, we just left
            else:
                line = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))).replace(b"\n", b" ") + b"\n" \
                    if rng.random() < 0.3 else rng.choice(BAD_LINES)
                sock.sendall(line)
                reply = json.loads(reader.readline())
                assert set(reply) == {"id", "ok", "data"} or set(reply) == {"id", "ok", "error"}, reply
                assert reply["ok"] is (b'"ping"' in line or b'"hello"' in line), (line, reply)
                sent += 1
                replies += 1
                continue
            reader.close()
            sock.close()
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(daemon.socket))
            reader = sock.makefile("rb")
            reader.readline()
        sock.close()
        with lock:
            totals["lines"] += sent
            totals["replies"] += replies

    stalled = socket.socket(socket.AF_UNIX)  # subscribes to everything and never reads a byte
    stalled.connect(str(daemon.socket))
    stalled.sendall(b'{"id": 1, "op": "subscribe", "events": true, "frames": true}\n')
    threads = [threading.Thread(target=client, args=(seed, 1250)) for seed in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - started
    assert totals["lines"] == 10_000 and totals["closed_oversized"] >= 1
    status = daemon.status()
    # It kept classifying throughout: at least half the camera's 20 frames/s while 8 clients fuzzed (the
    # fuzz may take only a second or two — replies no longer wait for a frame — so a fixed count would not do).
    classified = status["frames"] - frames_before
    print(f"\nfuzz: {elapsed:.1f} s, {classified} frames classified ({classified / elapsed:.1f}/s)")
    assert classified >= 0.5 * 20 * elapsed - 2, (classified, elapsed)
    assert wait_for(lambda: daemon.status()["frames"] >= status["frames"] + 10, timeout=5)  # and goes on
    assert store_digest(daemon.store) == before  # not one bad line changed what was taught
    rss_after = rss_kb(daemon.proc.pid)
    print(f"\nfuzz: {totals}; daemon RSS {rss_before / 1024:.0f} MB before, {rss_after / 1024:.0f} MB after")
    assert rss_after < rss_before + 150 * 1024  # bounded: no 10 MB line, reply or frame backlog is kept
    stalled.close()
    log = daemon.stop()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None or not Path("/usr/bin/python3").exists(),
                    reason="needs root to make users, and the OS's python3")
def test_only_the_sockets_group_may_connect(bundle_path, tmp_path, monkeypatch):
    import grp
    import pwd

    names = {"group": "tcsockgrp", "member": "tcsockin", "other": "tcsockout"}
    for name in names.values():
        subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", names["group"]], capture_output=True)
    try:
        subprocess.run(["groupadd", names["group"]], check=True)
        subprocess.run(["useradd", "--no-create-home", "-G", names["group"], names["member"]], check=True)
        subprocess.run(["useradd", "--no-create-home", names["other"]], check=True)
        folder = Path(f"/tmp/tc-socket-{os.getpid()}")  # a folder everyone may enter: only the socket's mode decides
        folder.mkdir(mode=0o755, exist_ok=True)
        folder.chmod(0o755)
        path = folder / "control.sock"
        from teachcam.edge.link.server import ControlServer

        server = ControlServer(str(path), lambda command, reply=None: None, group=names["group"]).start()
        try:
            assert (path.stat().st_mode & 0o777) == 0o660 and grp.getgrgid(path.stat().st_gid).gr_name == names["group"]
            probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                     "print(s.makefile().readline().strip())")

            def connect_as(user: str) -> subprocess.CompletedProcess:
                entry = pwd.getpwnam(user)
                groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]

                def become():
                    os.setgroups(groups)
                    os.setgid(entry.pw_gid)
                    os.setuid(entry.pw_uid)

                # The OS's Python: any user may run it (the venv's may sit in root's home).
                return subprocess.run(["/usr/bin/python3", "-c", probe, str(path)], capture_output=True, text=True,
                                      preexec_fn=become, timeout=30, cwd="/")

            member, other = connect_as(names["member"]), connect_as(names["other"])
            assert '"hello"' in member.stdout, member.stderr
            assert other.returncode != 0 and "PermissionError" in other.stderr
            # The CLI of a user outside the group (the person who just ran install-pi, until they log in again): one
            # line that says what to run — the socket itself refuses, or (as systemd makes it) its folder does.
            folder.chmod(0o750)
            os.chown(folder, 0, grp.getgrnam(names["group"]).gr_gid)
            entry = pwd.getpwnam(names["other"])
            cli = ("import sys; from pathlib import Path; import teachcam.edge.link.protocol as c; "
                   "c.SERVICE_SOCKET = Path(sys.argv[1]); from teachcam.edge.cli import main; sys.exit(main(sys.argv[2:]))")
            photo = Path(f"/tmp/tc-photo-{os.getpid()}.jpg")
            Image.new("RGB", (64, 48), (200, 80, 20)).save(photo)
            photo.chmod(0o644)
            for argv in (["status"], ["enroll", "-l", "mug", str(photo)]):
                result = run_python_as(entry.pw_uid, entry.pw_gid, cli, str(path), *argv,
                                       env={"PATH": "/usr/bin:/bin", "HOME": "/"})
                assert result.returncode == 2, result.stderr
                assert result.stderr.strip() == (
                    f"teachcam: error: permission denied on {path}: the teachcam service answers only members of group "
                    f"{names['group']} — run `sudo usermod -aG {names['group']} {names['other']}`, then log in again "
                    f"(or `newgrp {names['group']}` in this shell)"), result.stderr
        finally:
            server.close()
            shutil.rmtree(folder, ignore_errors=True)
            Path(f"/tmp/tc-photo-{os.getpid()}.jpg").unlink(missing_ok=True)
    finally:
        for name in (names["member"], names["other"]):
            subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", names["group"]], capture_output=True)


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "argument --k: 0: must be at least 1"),
    (["--cap", "0"], "argument --cap: 0: must be at least 1"),
    (["--threshold", "7"], "argument --threshold: 7.0: a similarity lies between -1 and 1"),
])
def test_impossible_knn_flags_are_one_line_and_the_store_is_untouched(bundle_path, tmp_path, flags, message):
    photo = save_views(tmp_path / "upload", "coffee.png", 1, seed=44)[0]
    store = tmp_path / "store"
    assert run_teachcam("enroll", "--bundle", bundle_path, "--store", store, "--label", "cup", photo).returncode == 0
    before = store_digest(store)
    for command in ("enroll", "predict"):
        args = [command, "--bundle", bundle_path, "--store", store, *flags, photo]
        result = run_teachcam(*(args[:1] + ["--label", "cup"] + args[1:] if command == "enroll" else args))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert store_digest(store) == before
    bad = run_teachcam("run", "--bundle", bundle_path, "--store", store, "--source", "demo", "--threshold", "7",
                       "--frames", "1", "--no-gpio")
    assert bad.returncode == 2 and "a similarity lies between -1 and 1" in bad.stderr.strip().splitlines()[-1]


def test_run_and_enroll_share_one_default_store_and_run_honours_teachcam_bundle(monkeypatch):
    from teachcam.edge.cli.common import DEFAULT_STORE as CLI_STORE

    assert DaemonConfig().store == DEFAULT_STORE == str(CLI_STORE)
    code = "from teachcam.edge.config import load_config; c = load_config(None); print(c.bundle, c.store)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "TEACHCAM_BUNDLE": "/srv/bundle", "TEACHCAM_STORE": "/srv/store"})
    assert result.stdout.split() == ["/srv/bundle", "/srv/store"]


def test_sighup_applies_leds_and_output_and_names_what_needs_a_restart(bundle_path, tmp_path, factory, caplog):
    from teachcam.edge.daemon.loop import Daemon

    config_path = tmp_path / "teachcam.toml"

    def write(leds: list[int], json_out: str, preview_size: int) -> None:
        config_path.write_text(f"""bundle = "{bundle_path}"\nstore = "{tmp_path / 'store'}"\nclasses = ["cat", "cup"]
[buttons]\npins = [5, 6]\nclear_pin = 26\n[leds]\npins = {leds}\n[output]\nterminal = "off"\njson = "{json_out}"
[control]\nsocket = "{tmp_path / 'c.sock'}"\npreview_max_size = {preview_size}\n""")

    write([12, 16], "off", 480)
    out = io.StringIO()
    from teachcam.edge.devices.camera import ArraySource

    frames = augmented_views("chelsea.png", 2, seed=45)
    daemon = Daemon(load_config(config_path), config_path=config_path, pin_factory=factory, keyboard=False,
                    source=ArraySource(frames, loop=True), stdout=out).start()
    try:
        assert [led.pin.info.name for led in daemon.leds.leds] == ["GPIO12", "GPIO16"]
        write([20, 21], "on", 320)
        daemon.reload()
        assert [led.pin.info.name for led in daemon.leds.leds] == ["GPIO20", "GPIO21"]  # [leds] applied
        daemon.step(frames[0])
        assert wait_for(lambda: '"event": "prediction"' in out.getvalue())  # [output] json = "on" applied
        assert "[control] changed; it takes effect at the next restart" in caplog.text
        with ControlClient(tmp_path / "c.sock") as client:  # the socket kept running through the reload
            assert client.request("ping")["pong"] > 0
    finally:
        daemon.close()


def test_preview_frames_are_encoded_once_for_all_subscribers_and_never_for_none(bundle_path, tmp_path, factory):
    from teachcam.edge.daemon.loop import Daemon
    from teachcam.edge.devices.camera import ArraySource

    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"},
                                "control": {"preview_max_fps": 60.0, "preview_max_size": 320}})
    frames = augmented_views("chelsea.png", 2, seed=46)
    daemon = Daemon(config, keyboard=False, source=ArraySource(frames, loop=True), stdout=io.StringIO()).start()
    box = next(b for b in daemon.mailboxes if b.port is daemon.control)
    try:
        for i in range(20):
            daemon.step(frames[i % 2])
        assert box.wait_idle()
        assert daemon.control.jpeg_encodes == 0  # nobody subscribes: nothing is encoded
        clients = [ControlClient(daemon.control.path).connect() for _ in range(3)]
        for client in clients:
            client.request("subscribe", events=False, frames=True)
        for i in range(15):
            daemon.step(frames[i % 2])
            time.sleep(1 / 50)  # slower than the 60/s cap: every frame is due
        assert box.wait_idle()
        encodes = daemon.control.jpeg_encodes
        assert encodes >= 10
        for client in clients:
            frame = next(message for message in client.messages() if "frame" in message)
            assert max(frame["width"], frame["height"]) <= 320
            Image.open(io.BytesIO(base64.b64decode(frame["jpeg"]))).verify()  # a real JPEG
            client.close()
        assert daemon.control.frames_sent == 3 * encodes  # three subscribers, one encode per frame
    finally:
        daemon.close()


def test_the_socket_keeps_its_group_without_chown_when_it_is_born_in_it(tmp_path, monkeypatch, caplog):
    # Under systemd (Group=teachcam) the socket is created in the right group, and the unit's
    # SystemCallFilter=~@privileged refuses chown: no call, so no false warning at every start.
    import grp

    from teachcam.edge.link.server import ControlServer

    calls = []

    def filtered_chown(*args):
        calls.append(args)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", filtered_chown)
    own_group = grp.getgrgid(os.getgid()).gr_name
    server = ControlServer(str(tmp_path / "control.sock"), lambda command, reply=None: None, group=own_group).start()
    server.close()
    assert calls == [] and "cannot give it to group" not in caplog.text


def test_the_web_link_says_when_the_daemon_is_back(tmp_path, caplog):
    import asyncio
    import logging

    from teachcam.edge.apps.web.link import DaemonLink
    from teachcam.edge.link.server import ControlServer

    path = tmp_path / "control.sock"

    def post(command, reply=None):
        if reply is not None:
            reply({})

    async def scenario():
        link = DaemonLink(path)
        task = asyncio.ensure_future(link.run())
        server = ControlServer(str(path), post).start()
        await asyncio.wait_for(link.up.wait(), 10)
        server.close()
        for _ in range(100):
            if not link.up.is_set():
                break
            await asyncio.sleep(0.05)
        server = ControlServer(str(path), post).start()
        await asyncio.wait_for(link.up.wait(), 10)
        server.close()
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="teachcam"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "teachcam.edge.apps.web.link"]
    assert any(line.startswith("lost the daemon's control socket") for line in lines), (lines, caplog.text)
    assert any(line.startswith(f"the daemon is back on {path} (away ") for line in lines), lines
