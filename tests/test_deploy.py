"""scripts/deploy against a real sshd on loopback standing in for the Pi (key-only, its own host key)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
OS_PYTHON = Path("/usr/bin/python3")
# Where Debian's (and Raspberry Pi OS's) Python finds locally installed packages.
OS_SITE = Path("/usr/local/lib/python3.11/dist-packages")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stand_in_pi(tmp_path):
    if os.geteuid() != 0 or not Path(SSHD).exists() or shutil.which("rsync") is None:
        pytest.skip("needs root, openssh-server and rsync (.ci/run installs them)")
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
PidFile {keys / 'sshd.pid'}
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(keys / "sshd.log")])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, (keys / "sshd.log").read_text()
            time.sleep(0.1)
    yield {"host": "root@127.0.0.1", "port": port, "identity": keys / "client"}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def os_picamera2(tmp_path):
    """What Raspberry Pi OS gives the stand-in Pi's own Python: numpy 1.24 (Debian's python3-numpy, by apt),
    a simplejpeg built against numpy 1 (PyPI's 1.6.6 wheel) and picamera2 importing it (our double)."""
    if not OS_PYTHON.exists() or subprocess.run([str(OS_PYTHON), "-c", "import numpy; assert numpy.__version__ < '2'"],
                                                capture_output=True).returncode != 0:
        pytest.skip("needs Debian's python3-numpy 1.x (.ci/run installs it)")
    wheels = tmp_path / "wheels"
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "-d", str(wheels),
                               "simplejpeg==1.6.6"], capture_output=True, text=True)
    if download.returncode != 0:
        pytest.skip(f"cannot fetch simplejpeg 1.6.6 from PyPI: {download.stderr.strip()[-200:]}")
    placed = [OS_SITE / "picamera2", OS_SITE / "simplejpeg", OS_SITE / "simplejpeg.libs",
              OS_SITE / "simplejpeg-1.6.6.dist-info"]
    if any(path.exists() for path in placed):
        pytest.skip(f"{OS_SITE} already has picamera2 or simplejpeg; not touching them")
    OS_SITE.mkdir(parents=True, exist_ok=True)
    try:
        shutil.unpack_archive(next(wheels.glob("simplejpeg-*.whl")), OS_SITE, "zip")
        shutil.copytree(ROOT / "tests" / "fakes" / "picamera2", OS_SITE / "picamera2",
                        ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run([str(OS_PYTHON), "-c", "import picamera2, simplejpeg"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        yield
    finally:
        for path in placed:
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_deploy_installs_and_a_second_deploy_changes_nothing(stand_in_pi, os_picamera2, bundle_path, tmp_path):
    scratch = tmp_path / "pi"
    env = {**os.environ,
           "DEPLOY_SSH_OPTIONS": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
           "TEACHCAM_PREFIX": str(scratch / "opt"), "TEACHCAM_ETC": str(scratch / "etc"),
           "TEACHCAM_UNIT_DIR": str(scratch / "systemd")}
    config = tmp_path / "teachcam.toml"
    config.write_text((ROOT / "systemd" / "teachcam.toml").read_text()
                      .replace("/opt/teachcam/bundle", str(scratch / "opt" / "bundle"))
                      .replace("/var/lib/teachcam", str(scratch / "var")))
    command = [str(ROOT / "scripts" / "deploy"), stand_in_pi["host"], str(bundle_path), "--config", str(config),
               "--port", str(stand_in_pi["port"]), "--identity", str(stand_in_pi["identity"])]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installing teachcam (device install)" in first.stdout
    assert "✓ bundle" in first.stdout
    # The venv kept the OS's numpy 1.x, so the OS's picamera2 (numpy-1-built simplejpeg) imports.
    assert "install-pi: the venv imports picamera2 (numpy 1." in first.stdout
    # The doctor ran with the unit's view of /proc and says what this machine is, truthfully.
    assert "with the unit's /proc view" in first.stdout
    assert "runs with XNNPACK" in first.stdout
    assert "gpio         not a Raspberry Pi" in first.stdout
    unit = (scratch / "systemd" / "teachcam.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam run --config {scratch / 'etc'}/teachcam.toml" in unit
    # the MQTT bridge's unit is installed too, and left disabled: the example config has no [mqtt] enabled
    bridge = (scratch / "systemd" / "teachcam-mqtt.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam mqtt --config {scratch / 'etc'}/teachcam.toml" in bridge
    assert "installing paho-mqtt" not in first.stdout
    web_unit = (scratch / "systemd" / "teachcam-web.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam web --config {scratch / 'etc'}/teachcam.toml" in web_unit
    assert "installing aiohttp" not in first.stdout
    venv_python = scratch / "opt" / "venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import edge, importlib.util as u; "
                            "print(u.find_spec('tensorflow') is None, u.find_spec('ai_edge_litert') is not None)"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["True", "True"], "the device install must have the runtime and no TensorFlow"
    camera = subprocess.run([str(venv_python), "-c", "import numpy, picamera2, ai_edge_litert.interpreter, gpiozero, "
                             "importlib.util as u; print(numpy.__version__, u.find_spec('cv2') is None)"],
                            capture_output=True, text=True)
    assert camera.returncode == 0, camera.stderr
    numpy_version, no_opencv = camera.stdout.split()
    assert numpy_version.startswith("1."), camera.stdout
    assert no_opencv == "True", "the Pi camera needs no OpenCV: the picamera2 config installs none"
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "install-pi: nothing changed" in second.stdout
    size = subprocess.run(["du", "-sm", str(scratch / "opt" / "venv")], capture_output=True, text=True).stdout.split()[0]
    print(f"\ndevice venv on the stand-in Pi: {size} MB")


def test_deploy_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    result = subprocess.run([str(ROOT / "scripts" / "deploy"), "pi@nowhere", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"deploy: {tmp_path} is not a teachcam bundle (no manifest.json)"
