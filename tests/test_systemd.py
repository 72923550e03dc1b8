"""systemd/kws.service: systemd accepts it, rates its sandbox OK, and kws runs inside that sandbox.

There is no systemd (PID 1) on the test machines, so the unit is checked with systemd-analyze
(``apt-get install systemd``), and its seccomp filters are applied by ``seccomp_sandbox`` to a real
``kws detect`` and ``kws listen`` (on an ALSA file-plugin microphone).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLE_RATE_HZ, TEST_A, read_clip

UNIT = ROOT / "systemd" / "kws.service"
SANDBOX = Path(__file__).with_name("seccomp_sandbox.py")
MAX_EXPOSURE = 2.5
"""``systemd-analyze security`` rates 2.5 and below "OK" (0 to 10, lower is safer)."""
YES_CLIP = TEST_A / "yes" / "3b4f8f24_nohash_0.flac"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not found: apt-get install systemd")


def unit_values(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.M)


def fake_root(tmp_path: Path, unit_text: str, executables: bool = True) -> Path:
    """A root for ``systemd-analyze verify --root``: systemd's own units, the unit, stand-ins for its commands."""
    root = tmp_path / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/kws.service").write_text(unit_text)
    if executables:
        for line in unit_values(unit_text, "ExecStart") + unit_values(unit_text, "ExecReload"):
            program = root / line.split()[0].lstrip("-@:+!").lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    # The unit's path is inside the root: with --root, a path outside it is not read at all.
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/kws.service"],
                          capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    result = verify(fake_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0 and (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr


def test_the_verify_check_catches_mistakes(tmp_path):
    """The check above reads the shipped file: a typo, a bad value and a missing command all show."""
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes").replace("UMask=", "UMaks=")
    result = verify(fake_root(tmp_path / "a", broken))
    output = result.stdout + result.stderr
    assert "Failed to parse service restart specifier" in output and "Unknown key 'UMaks'" in output, output
    result = verify(fake_root(tmp_path / "b", UNIT.read_text(), executables=False))
    assert result.returncode != 0 and "/opt/kws/bin/kws is not executable" in result.stdout + result.stderr


def security(path: Path, threshold: int) -> tuple[subprocess.CompletedProcess, float]:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}",
                             "--no-pager", str(path)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for kws\.service: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    return result, float(match.group(1))


def test_systemd_analyze_security_rates_the_unit_ok():
    # --threshold is on a 0-100 scale: 25 is the 2.5 of the summary line
    result, exposure = security(UNIT, threshold=int(MAX_EXPOSURE * 10))
    print(result.stdout.strip().splitlines()[-1])
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_security_check_can_fail(tmp_path):
    """Without the sandbox (root, no filters) the same check fails: it measures the file it is given."""
    bare = tmp_path / "kws.service"
    text = UNIT.read_text()
    bare.write_text("\n".join(line for line in text.splitlines()
                              if line.startswith(("[", "Description", "Type", "ExecStart", "WantedBy"))) + "\n")
    result, exposure = security(bare, threshold=int(MAX_EXPOSURE * 10))
    assert exposure > MAX_EXPOSURE and result.returncode != 0


def test_the_unit_is_a_notify_service_with_watchdog_reload_and_state_directory():
    text = UNIT.read_text()
    assert unit_values(text, "Type") == ["notify"]
    assert unit_values(text, "NotifyAccess") == ["main"]
    assert unit_values(text, "WatchdogSec") and unit_values(text, "Restart") == ["on-failure"]
    assert unit_values(text, "ExecStart") == ["/opt/kws/bin/kws listen --config /etc/kws/kws.toml"]
    assert unit_values(text, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_values(text, "User") == ["kws"] and "audio" in unit_values(text, "SupplementaryGroups")[0].split()
    assert unit_values(text, "StateDirectory") == ["kws"]
    # the microphone stays reachable: no private /dev, ALSA devices allowed
    assert unit_values(text, "PrivateDevices") in ([], ["no"])
    assert unit_values(text, "DevicePolicy") == ["closed"] and "char-alsa rw" in unit_values(text, "DeviceAllow")


# ---------------------------------------------------------------------------------------- the sandbox


def sandboxed(options: list[str], *kws_args: str) -> list[str]:
    return [sys.executable, str(SANDBOX), *options, "--", sys.executable, "-m", "kws.cli", *kws_args]


@pytest.fixture(scope="module")
def unit_syscalls(tmp_path_factory) -> Path:
    """The unit's SystemCallFilter= as an allow-list file for seccomp_sandbox."""
    from seccomp_sandbox import syscall_allowlist

    allowed = syscall_allowlist(UNIT.read_text())
    assert {"read", "execve", "sendto"} <= allowed and not {"setgroups", "sched_setaffinity", "reboot"} & allowed
    path = tmp_path_factory.mktemp("seccomp") / "allowed.txt"
    path.write_text("\n".join(sorted(allowed)))
    return path


def sandbox_options(unit_syscalls: Path) -> list[str]:
    """seccomp_sandbox options for what the unit says."""
    mdwe = unit_values(UNIT.read_text(), "MemoryDenyWriteExecute") == ["yes"]
    return ["--syscalls", str(unit_syscalls)] + (["--mdwe"] if mdwe else [])


def test_the_system_call_filter_is_in_force(unit_syscalls):
    """Calls in ~@privileged and ~@resources fail with EPERM inside the sandbox (and nothing is killed)."""
    code = ("import os\n"
            "for call, args in ((os.setgroups, ([],)), (os.sched_setaffinity, (0, {0})), (os.nice, (1,))):\n"
            "    try:\n        call(*args); print(call.__name__, 'allowed')\n"
            "    except PermissionError: print(call.__name__, 'EPERM')\n")
    result = subprocess.run([sys.executable, str(SANDBOX), "--syscalls", str(unit_syscalls), "--",
                             sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["setgroups", "EPERM", "sched_setaffinity", "EPERM", "nice", "EPERM"]


def test_kws_detect_and_its_hooks_run_under_the_units_filters(unit_syscalls, tmp_path):
    out = tmp_path / "hook.txt"
    config = tmp_path / "kws.toml"
    config.write_text(f'[hooks.commands]\nyes = ["sh", "-c", "echo $KWS_KEYWORD >> {out}"]\n')
    result = subprocess.run(sandboxed(sandbox_options(unit_syscalls), "detect", "--config", str(config),
                                      str(YES_CLIP)), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\byes\b", result.stdout), result.stdout + result.stderr
    result = subprocess.run(sandboxed(sandbox_options(unit_syscalls), "listen", "--config", str(config),
                                      "--input", str(YES_CLIP)), capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert '"keyword": "yes"' in result.stdout
    assert out.read_text() == "yes\n"  # the hook ran (fork, exec, pipes) under the filter


def file_microphone(tmp_path: Path) -> dict:
    """An ALSA microphone "kwsfile" that plays a yes and then silence (ALSA's file plugin, no daemon)."""
    audio = np.concatenate([np.zeros(SAMPLE_RATE_HZ, np.float32), read_clip("yes/3b4f8f24_nohash_0.flac"),
                            np.zeros(20 * SAMPLE_RATE_HZ, np.float32)])
    raw = tmp_path / "mic.raw"
    (np.clip(audio * 32768, -32768, 32767).astype("<i2")).tofile(raw)
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.kwsfile {{\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{raw}"\n format "raw"\n}}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_"))}
    return dict(env, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}")


def listen_on_file_microphone(options: list[str], env: dict, timeout_s: float = 60) -> tuple[int | None, str]:
    """``kws listen`` on the microphone until it says it listens (or exits, or timeout_s); then SIGTERM.

    Returns its exit status (None if it had to be killed) and its stderr.
    """
    process = subprocess.Popen(sandboxed(options, "listen", "--device", "kwsfile"), env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "listening on microphone" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and not listening.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    if listening.is_set():
        time.sleep(0.5)  # let the audio callback run
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = None
    reader.join(timeout=5)
    return status, "".join(lines)


def test_kws_listen_opens_a_microphone_under_the_units_filters(unit_syscalls, tmp_path):
    status, log = listen_on_file_microphone(sandbox_options(unit_syscalls), file_microphone(tmp_path))
    assert "listening on microphone" in log and status == 0, log[-3000:]
    assert "Traceback" not in log and "Operation not permitted" not in log, log[-3000:]


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux-only")
def test_memory_deny_write_execute_matches_what_kws_needs(tmp_path):
    """MemoryDenyWriteExecute=yes stops inference from nothing, but stops the microphone.

    sounddevice's stream callback is a cffi ``ffi.callback()``, which needs writable executable
    memory; so the unit leaves MemoryDenyWriteExecute off. If a sounddevice/cffi release no longer
    needs it, the microphone opens under the filter, this test fails, and the unit can turn it on.
    """
    from seccomp_sandbox import mdwe_supported

    if not mdwe_supported():
        pytest.skip("the MemoryDenyWriteExecute filter is written for x86-64 and aarch64 only")
    check = subprocess.run([sys.executable, str(SANDBOX), "--mdwe", "--", sys.executable, "-c",
                            "import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=7)\nexcept PermissionError:\n"
                            "    print('refused')\n"], capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "refused", check.stderr  # the filter itself works

    result = subprocess.run(sandboxed(["--mdwe"], "detect", str(YES_CLIP)), capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0 and re.search(r"\byes\b", result.stdout), result.stderr

    status, log = listen_on_file_microphone(["--mdwe"], file_microphone(tmp_path))
    microphone_works = status == 0 and "listening on microphone" in log
    turned_on = unit_values(UNIT.read_text(), "MemoryDenyWriteExecute") == ["yes"]
    if turned_on:
        assert microphone_works, "MemoryDenyWriteExecute=yes breaks kws listen:\n" + log[-3000:]
    else:
        assert not microphone_works, "kws listen now works without writable executable memory: " \
                                     "set MemoryDenyWriteExecute=yes in systemd/kws.service"
        assert "Cannot allocate write+execute memory for ffi.callback()" in log, log[-3000:]
