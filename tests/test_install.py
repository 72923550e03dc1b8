"""scripts/install.sh against a temporary root (--root): what it writes, what it keeps, what it removes.

With --root nothing outside the folder is touched: apt-get, useradd, chown and systemctl are
printed, not run. Most tests pass --skip-pip (a virtualenv, no pip install); one fixture runs the
real pip install once (about 30 s here with a warm pip cache) and the installed kws then runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TEST_A

INSTALL = ROOT / "scripts" / "install.sh"
UNIT = ROOT / "systemd" / "kws.service"
DEFAULT_CONFIG = ROOT / "systemd" / "kws.toml"
SYSTEM_PYTHON = "/usr/bin/python3"
YES_CLIP = TEST_A / "yes" / "3b4f8f24_nohash_0.flac"

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists() or shutil.which("dpkg-query") is None,
                                reason="install.sh is for Debian-like systems with /usr/bin/python3")


def install(*args: str, env: dict | None = None, user: str | None = None, timeout: float = 600):
    command = ["bash", str(INSTALL), *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    return result


def ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def actions(output: str) -> list[str]:
    """The lines of what was done ("+ ...")."""
    return [line for line in output.splitlines() if line.startswith("+ ")]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under root, but the virtualenv's insides: (mode, size, mtime_ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("opt/kws/") and relative != "opt/kws/bin/python":
            continue
        stat = path.lstat()
        out[relative] = (stat.st_mode, stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def test_install_into_a_root_writes_config_unit_state_and_venv(root):
    output = ok(install("--root", str(root), "--skip-pip"))
    assert (root / "etc/kws/kws.toml").read_text() == DEFAULT_CONFIG.read_text()
    assert (root / "etc/kws/kws.toml").stat().st_mode & 0o777 == 0o640  # may hold hook commands, passwords
    assert (root / "etc/kws").stat().st_mode & 0o777 == 0o750
    assert (root / "etc/systemd/system/kws.service").read_text() == UNIT.read_text()
    assert (root / "var/lib/kws/models").is_dir()
    assert (root / "opt/kws/bin/python").exists()
    assert "skipped (--skip-pip)" in output
    # nothing outside the root: the system commands are shown, not run
    for command in ("useradd --system --user-group --groups audio", "chown root:kws", "systemctl daemon-reload",
                    "systemctl enable kws", "systemctl restart kws"):
        assert f"(--root, not run) {command}" in output, output
    assert not any(re.match(r"\+ (apt-get|useradd|usermod|chown|systemctl|env )", line) for line in actions(output))


def test_the_default_config_is_commented_and_loads(tmp_path):
    """Every setting is commented out, and kws accepts the file as it is."""
    text = DEFAULT_CONFIG.read_text()
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())
    from kws.config import load_config

    config = load_config(DEFAULT_CONFIG)
    assert config.models == () and config.hooks.commands == {}
    # and uncommented, its examples are valid too (but the model paths that do not exist here)
    example = tmp_path / "kws.toml"
    lines = [line[1:].strip() for line in text.splitlines()
             if re.match(r'^# ?(\[[\w.]+\]|[\w"*/]+ *= )', line) and not line.startswith("# model")]
    example.write_text("\n".join(lines) + "\n")
    config = load_config(example)
    assert config.keywords == ("yes", "no", "stop", "go") and config.thresholds["stop"] == 0.8
    assert set(config.hooks.commands) == {"yes", "stop", "*"}


def test_a_second_run_changes_nothing_and_keeps_the_users_config(root):
    ok(install("--root", str(root), "--skip-pip"))
    config = root / "etc/kws/kws.toml"
    config.write_text('model = "kws12"\nkeywords = ["stop"]\n')
    before = snapshot(root)
    output = ok(install("--root", str(root), "--skip-pip"))
    assert actions(output) == [], output
    assert "done: nothing to change" in output
    assert "ok: /etc/kws/kws.toml exists: kept as it is" in output
    assert snapshot(root) == before
    assert config.read_text() == 'model = "kws12"\nkeywords = ["stop"]\n'


def test_a_changed_unit_is_replaced(root):
    ok(install("--root", str(root), "--skip-pip"))
    unit = root / "etc/systemd/system/kws.service"
    unit.write_text(unit.read_text().replace("RestartSec=10s", "RestartSec=1s"))
    output = ok(install("--root", str(root), "--skip-pip"))
    assert actions(output) == [f"+ install -D -m 0644 {UNIT} {unit}"]
    assert unit.read_text() == UNIT.read_text()


def test_dry_run_changes_nothing_and_shows_every_action(root):
    output = ok(install("--dry-run", "--root", str(root), "--skip-pip"))
    assert list(root.iterdir()) == []
    assert actions(output) == []
    for action in (f"install -d -m 0750 {root}/etc/kws", f"install -m 0640 {DEFAULT_CONFIG} {root}/etc/kws/kws.toml",
                   f"install -d -m 0750 {root}/var/lib/kws/models", f"{SYSTEM_PYTHON} -m venv {root}/opt/kws",
                   f"install -D -m 0644 {UNIT} {root}/etc/systemd/system/kws.service"):
        assert f"(dry run) {action}" in output, output


def test_dry_run_of_an_uninstall_changes_nothing(root):
    ok(install("--root", str(root), "--skip-pip"))
    before = snapshot(root)
    output = ok(install("--dry-run", "--uninstall", "--root", str(root)))
    assert f"(dry run) rm -rf {root}/opt/kws" in output
    assert snapshot(root) == before


def test_uninstall_removes_service_and_venv_but_keeps_config_and_data(root):
    ok(install("--root", str(root), "--skip-pip"))
    (root / "etc/kws/kws.toml").write_text('device = "USB"\n')
    (root / "var/lib/kws/models/computer.json").write_text("{}")
    (root / "var/lib/kws/captures/_unknown_").mkdir(parents=True)
    (root / "var/lib/kws/captures/_unknown_/clip.wav").write_bytes(b"RIFF")
    output = ok(install("--uninstall", "--root", str(root)))
    assert not (root / "etc/systemd/system/kws.service").exists()
    assert not (root / "opt/kws").exists()
    assert "(--root, not run) systemctl disable --now kws" in output
    assert "(--root, not run) userdel kws" in output
    assert (root / "etc/kws/kws.toml").read_text() == 'device = "USB"\n'
    assert (root / "var/lib/kws/models/computer.json").read_text() == "{}"
    assert (root / "var/lib/kws/captures/_unknown_/clip.wav").read_bytes() == b"RIFF"
    assert "kept /etc/kws (your config) and /var/lib/kws (models, recordings, captures)" in output
    # a second uninstall has nothing left to do
    output = ok(install("--uninstall", "--root", str(root)))
    assert actions(output) == [] and "ok: no /opt/kws" in output


def one_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: "), result.stderr
    return lines[0]


def os_release(tmp_path: Path, **fields: str) -> str:
    path = tmp_path / "os-release"
    path.write_text("".join(f'{key}="{value}"\n' for key, value in fields.items()))
    return str(path)


def test_clear_errors_for_unsupported_systems(root, tmp_path):
    ubuntu = os_release(tmp_path, ID="ubuntu", ID_LIKE="debian", VERSION_CODENAME="jammy",
                        PRETTY_NAME="Ubuntu 22.04.4 LTS")
    error = one_error(install("--root", str(root), env={"KWS_OS_RELEASE": ubuntu}))
    assert "unsupported OS Ubuntu 22.04.4 LTS" in error and "Bookworm or Trixie" in error

    trixie_32 = os_release(tmp_path, ID="raspbian", VERSION_CODENAME="trixie", PRETTY_NAME="Raspbian 13 (trixie)")
    error = one_error(install("--root", str(root), env={"KWS_OS_RELEASE": trixie_32, "KWS_ARCH": "armv7l"}))
    assert "32-bit ARM (armv7l)" in error and "tflite-runtime" in error and "64-bit Raspberry Pi OS" in error

    # 32-bit Bookworm with a Python newer than tflite-runtime's wheels (a hand-built one, say)
    bookworm_32 = os_release(tmp_path, ID="raspbian", VERSION_CODENAME="bookworm", PRETTY_NAME="Raspbian 12")
    python313 = tmp_path / "python3.13"
    python313.write_text("#!/bin/sh\necho 3.13\n")
    python313.chmod(0o755)
    error = one_error(install("--root", str(root), "--python", str(python313),
                              env={"KWS_OS_RELEASE": bookworm_32, "KWS_ARCH": "armv7l"}))
    assert "Python 3.11 or older" in error and "is 3.13" in error

    error = one_error(install("--root", str(root), env={"KWS_ARCH": "armv6l"}))
    assert "unsupported architecture armv6l" in error and "Pi Zero" in error

    error = one_error(install("--root", str(root), "--python", str(tmp_path / "nope")))
    assert f"no Python at {tmp_path / 'nope'}" in error

    error = one_error(install("--root", str(root), "--frobnicate"))
    assert "unknown option --frobnicate" in error
    assert list(root.iterdir()) == []  # every refusal came before any change


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root to run as nobody")
def test_without_root_it_says_so(tmp_path):
    error = one_error(install(user="nobody"))
    assert "run as root: sudo" in error
    # a dry run needs no root
    result = install("--dry-run", "--skip-pip", user="nobody")
    assert result.returncode == 0 and "(dry run) " in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------------------ the real pip install


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One real install (virtualenv + pip install) into a temporary root: (root, source, output).

    pip installs a copy of the checkout, so that edits made meanwhile do not count as changes.
    """
    base = tmp_path_factory.mktemp("pip")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "kws", "training", "models"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (ROOT / name).is_dir() else {}))
    root = base / "root"
    root.mkdir()
    output = ok(install("--root", str(root), "--no-start", "--source", str(source)))
    return root, source, output


def test_pip_installs_a_working_kws(installed):
    root, source, output = installed
    assert f"+ {root}/opt/kws/bin/python -m pip install --quiet --disable-pip-version-check --upgrade {source}" \
        in output
    kws = root / "opt/kws/bin/kws"
    info = subprocess.run([str(kws), "info", "--json"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["model"] == "kws12"
    detect = subprocess.run([str(kws), "detect", "--json", "--config", str(root / "etc/kws/kws.toml"), str(YES_CLIP)],
                            capture_output=True, text=True, timeout=120)
    assert detect.returncode == 0, detect.stderr
    assert [json.loads(line)["keyword"] for line in detect.stdout.splitlines()] == ["yes"]


def test_pip_is_not_run_again_for_an_unchanged_checkout(installed):
    root, source, _ = installed
    output = ok(install("--root", str(root), "--no-start", "--source", str(source)))
    assert actions(output) == [], output
    assert f"ok: kws in /opt/kws is up to date with {source}" in output
    # a changed source is installed again
    (source / "kws" / "changed.py").write_text("")
    output = ok(install("--root", str(root), "--no-start", "--source", str(source)))
    assert len(actions(output)) == 1 and "pip install" in actions(output)[0], output
