"""scripts/deploy against a real sshd on loopback standing in for the Pi (key-only, its own host key)."""

from __future__ import annotations

import grp
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
OS_PYTHON = Path("/usr/bin/python3")
# Where Debian's (and Raspberry Pi OS's) Python finds locally installed packages.
OS_SITE = Path("/usr/local/lib/python3.11/dist-packages")


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PI_USER, PI_PASSWORD = "tcdeploy", "raspberry-4-ever"


@pytest.fixture
def stand_in_pi():
    """A real sshd on loopback (key-only) and a user whose sudo asks for a password, as on Raspberry Pi OS images
    since 2026-04-13 (pi-gen PASSWORDLESS_SUDO=0)."""
    if os.geteuid() != 0 or not Path(SSHD).exists() or shutil.which("rsync") is None or shutil.which("sudo") is None:
        pytest.skip("needs root, openssh-server, rsync and sudo (.ci/run installs them)")
    keys = Path(tempfile.mkdtemp(prefix="tc-sshd-"))  # readable by the user: sshd reads its keys with its uid
    keys.chmod(0o755)
    subprocess.run(["userdel", "-r", PI_USER], capture_output=True)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", PI_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{PI_USER}:{PI_PASSWORD}\n", text=True, check=True)
    sudoers = Path(f"/etc/sudoers.d/{PI_USER}")
    sudoers.write_text(f"{PI_USER} ALL=(ALL) ALL\n")
    sudoers.chmod(0o440)
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
    try:
        yield {"host": f"{PI_USER}@127.0.0.1", "port": port, "identity": keys / "client",
               "home": Path(f"/home/{PI_USER}")}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        sudoers.unlink(missing_ok=True)
        subprocess.run(["userdel", "-r", PI_USER], capture_output=True)
        shutil.rmtree(keys, ignore_errors=True)


def deploy_command(pi, bundle: Path, *extra: str) -> list[str]:
    return [str(ROOT / "scripts" / "deploy"), pi["host"], str(bundle), "--port", str(pi["port"]),
            "--identity", str(pi["identity"]), *extra]


DEPLOY_ENV = {**os.environ,
              "DEPLOY_SSH_OPTIONS": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"}


def run_on_a_terminal(command: list[str], env: dict, answers: dict[str, str], timeout: float = 900) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its controlling terminal (a person at a laptop), typing the answer
    each time its prompt shows; returns the exit status and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its stdin, stdout, stderr and /dev/tty
        try:
            os.execvpe(command[0], command, env)
        finally:
            os._exit(127)
    shown, answered, deadline = b"", dict.fromkeys(answers, 0), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            for prompt, answer in answers.items():
                while shown.count(prompt.encode()) > answered[prompt]:
                    os.write(fd, (answer + "\n").encode())
                    answered[prompt] += 1
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace").replace("\r\n", "\n")


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
    env = {**DEPLOY_ENV, "TEACHCAM_PREFIX": str(scratch / "opt"), "TEACHCAM_ETC": str(scratch / "etc"),
           "TEACHCAM_UNIT_DIR": str(scratch / "systemd")}
    config = tmp_path / "teachcam.toml"
    config.write_text((ROOT / "systemd" / "teachcam.toml").read_text()
                      .replace("/opt/teachcam/bundle", str(scratch / "opt" / "bundle"))
                      .replace("/var/lib/teachcam", str(scratch / "var")))
    command = deploy_command(stand_in_pi, bundle_path, "--config", str(config))
    # sudo on the Pi wants the password: deploy asks for it once, on the terminal, and the install goes through.
    prompt = f"deploy: [sudo] password for {PI_USER} on {stand_in_pi['host']}: "
    status, out = run_on_a_terminal(command, env, {prompt: PI_PASSWORD})
    assert status == 0, out
    assert out.count(prompt) == 1 and PI_PASSWORD not in out  # asked once, never echoed
    assert "installing teachcam (device install)" in out
    assert "✓ bundle" in out
    # The venv kept the OS's numpy 1.x, so the OS's picamera2 (numpy-1-built simplejpeg) imports.
    assert "install-pi: the venv imports picamera2 (numpy 1." in out
    assert "install-pi: Python 3.11, the OS's numpy 1.24" in out
    # The doctor ran with the unit's view of /proc and says what this machine is, truthfully.
    assert "with the unit's /proc view" in out
    assert "runs with XNNPACK" in out
    assert "gpio         not a Raspberry Pi" in out
    unit = (scratch / "systemd" / "teachcam.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam run --config {scratch / 'etc'}/teachcam.toml" in unit
    # only the groups that exist here (this Debian has video, render, plugdev, but no gpio or i2c)
    groups = next(line for line in unit.splitlines() if line.startswith("SupplementaryGroups=")).split("=")[1].split()
    assert groups == [g for g in ("video", "render", "gpio", "i2c", "plugdev") if group_exists(g)]
    # the MQTT bridge's unit is installed too, and left disabled: the example config has no [mqtt] enabled
    bridge = (scratch / "systemd" / "teachcam-mqtt.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam mqtt --config {scratch / 'etc'}/teachcam.toml" in bridge
    assert "installing paho-mqtt" not in out
    web_unit = (scratch / "systemd" / "teachcam-web.service").read_text()
    assert f"ExecStart={scratch / 'opt'}/venv/bin/teachcam web --config {scratch / 'etc'}/teachcam.toml" in web_unit
    assert "installing aiohttp" not in out
    venv_python = scratch / "opt" / "venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import edge, importlib.util as u; "
                            "print(u.find_spec('tensorflow') is None, u.find_spec('ai_edge_litert') is not None)"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["True", "True"], "the device install must have the runtime and no TensorFlow"
    camera = subprocess.run([str(venv_python), "-c", "import numpy, picamera2, ai_edge_litert.interpreter, gpiozero, "
                             "importlib.util as u; print(numpy.__version__, u.find_spec('cv2') is None, numpy.__file__)"],
                            capture_output=True, text=True)
    assert camera.returncode == 0, camera.stderr
    numpy_version, no_opencv, numpy_file = camera.stdout.split()
    assert numpy_version.startswith("1."), camera.stdout
    assert numpy_file.startswith("/usr/lib/python3/"), "the venv must use the OS's numpy, not a copy of its own"
    assert no_opencv == "True", "the Pi camera needs no OpenCV: the picamera2 config installs none"
    status, again = run_on_a_terminal(command, env, {prompt: PI_PASSWORD})
    assert status == 0, again
    assert "install-pi: nothing changed" in again
    size = subprocess.run(["du", "-sm", str(scratch / "opt" / "venv")], capture_output=True, text=True).stdout.split()[0]
    print(f"\ndevice venv on the stand-in Pi: {size} MB")


def test_deploy_without_a_terminal_for_the_sudo_password_says_how_and_copies_nothing(stand_in_pi, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    # start_new_session: no controlling terminal, as from a script or CI
    result = subprocess.run(deploy_command(stand_in_pi, bundle), capture_output=True, text=True, env=DEPLOY_ENV,
                            stdin=subprocess.DEVNULL, start_new_session=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"deploy: sudo on {stand_in_pi['host']} asks for {PI_USER}'s password and there is no terminal here to type it: "
        f"run deploy from a terminal (it asks once), or let {PI_USER} use sudo without a password on the Pi: "
        f"echo '{PI_USER} ALL=(ALL) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/010_{PI_USER}-nopasswd")
    assert not (stand_in_pi["home"] / "teachcam-deploy").exists()


def test_deploy_with_a_wrong_sudo_password_stops_before_copying(stand_in_pi, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    prompt = f"deploy: [sudo] password for {PI_USER} on {stand_in_pi['host']}: "
    command = deploy_command(stand_in_pi, bundle)
    status, out = run_on_a_terminal(command, DEPLOY_ENV, {prompt: "wrong"}, timeout=120)
    assert status == 1, out
    assert out.count(prompt) == 3, out
    assert out.count(f"deploy: sudo on {stand_in_pi['host']} refused that password") == 3, out
    assert f"deploy: sudo on {stand_in_pi['host']} refused the password three times; nothing was copied" in out
    assert not (stand_in_pi["home"] / "teachcam-deploy").exists()


def test_deploy_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    result = subprocess.run([str(ROOT / "scripts" / "deploy"), "pi@nowhere", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"deploy: {tmp_path} is not a teachcam bundle (no manifest.json)"
