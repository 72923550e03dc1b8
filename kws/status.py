"""How ``kws listen`` is doing: the status it logs and writes as JSON every so often, and ``kws status``.

The daemon (``kws.daemon``) fills a plain dict (``FORMAT_VERSION``) and hands it to
``status_line`` for the log and ``write_status`` for the file; ``show_status`` reads
the file back for ``kws status``, or, without one, asks systemd about the service.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Mapping

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Of the status file; ``kws status`` reads this one only."""
STATUS_FILE_NAME = "status.json"
SERVICE_STATE_DIRECTORY = Path("/var/lib/kws")
"""``StateDirectory=kws`` of ``systemd/kws.service``: where ``kws status`` looks when not told."""
STALE_INTERVALS = 3
"""A status file older than this many status intervals belongs to a daemon that is stuck or gone."""
SERVICE = "kws"
"""The systemd unit ``kws status`` asks about when there is no status file."""
SYSTEMCTL_TIMEOUT_S = 10.0

REQUIRED_KEYS = frozenset({
    "format_version", "pid", "state", "source", "started_at", "written_at", "uptime_s", "status_interval_s", "models",
    "detections", "detections_total", "overruns", "device_overflows", "microphone_losses", "reloads", "failed_reloads"})
"""What ``kws status`` needs in a status file."""

STATE_LISTENING = "listening"
STATE_WAITING = "waiting for microphone"
STATE_STOPPED = "stopped"


def status_file_from_environment(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where ``kws listen`` writes its status unless told: ``$STATE_DIRECTORY/status.json``, else nowhere.

    systemd sets ``$STATE_DIRECTORY`` for ``StateDirectory=`` (the first one if there are several).
    """
    environ = os.environ if environ is None else environ
    value = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) / STATUS_FILE_NAME if value else None


def status_file_to_read(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``kws status`` looks unless told: as ``kws listen`` would write it, else the service's."""
    return status_file_from_environment(environ) or SERVICE_STATE_DIRECTORY / STATUS_FILE_NAME


# --------------------------------------------------------------------------- the process


def rss_bytes() -> int | None:
    """Resident memory of this process (``/proc/self/statm``); None where there is no /proc."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class ProcessUsage:
    """CPU time this process used since the previous ``cpu_percent()`` call, as a percentage of one core."""

    def __init__(self):
        self._wall_s, self._cpu_s = time.monotonic(), _cpu_s()

    def cpu_percent(self) -> float | None:
        wall_s, cpu_s = time.monotonic(), _cpu_s()
        elapsed_s = wall_s - self._wall_s
        used_s = cpu_s - self._cpu_s
        self._wall_s, self._cpu_s = wall_s, cpu_s
        return 100.0 * used_s / elapsed_s if elapsed_s > 0 else None


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system  # this process's threads; hooks (children) are not counted


# --------------------------------------------------------------------------- text


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``, ``3 d 04 h``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def detection_counts_text(counts: Mapping[str, Mapping[str, int]]) -> str:
    """``yes 3, stop 1`` (one model) or ``kws12/yes 3, computer/computer 2`` (several); ``none`` without any."""
    several = len([m for m, words in counts.items() if words]) > 1
    parts = [f"{f'{model}/' if several else ''}{keyword} {n}"
             for model, words in counts.items() for keyword, n in words.items()]
    return ", ".join(parts) or "none"


def _megabytes(value: int | None) -> str:
    return "?" if value is None else f"{value / 1e6:.1f} MB"


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}%"


def status_line(status: Mapping[str, Any]) -> str:
    """The periodic status line of the log."""
    state = status["state"]
    if state == STATE_WAITING and status.get("microphone_lost_s") is not None:
        state = f"{state} for {format_duration(status['microphone_lost_s'])}"
    return (f"status: up {format_duration(status['uptime_s'])}, {state} ({status['source']}); "
            f"detections {status['detections_total']} ({detection_counts_text(status['detections'])}); "
            f"{status['overruns']} audio block(s) dropped, {status['device_overflows']} device overflow(s), "
            f"microphone lost {status['microphone_losses']} time(s); "
            f"CPU {_percent(status.get('cpu_percent'))} of one core, RSS {_megabytes(status.get('rss_bytes'))}")


def describe(status: Mapping[str, Any], path: Path, now: float) -> list[str]:
    """``kws status``: a few lines about a status that is fresh."""
    models = "; ".join(f"{name} ({', '.join(words)})" for name, words in status["models"].items())
    last = status.get("last_detection")
    lines = [
        f"kws {status['state']} ({status['source']}), pid {status['pid']}, up {format_duration(status['uptime_s'])}",
        f"models      {models}",
        f"detections  {status['detections_total']} ({detection_counts_text(status['detections'])})"
        + (f"; last: {last['keyword']} at {last['time']}" if last else ""),
        f"audio       {status['overruns']} block(s) dropped (kws fell behind), {status['device_overflows']} device "
        f"overflow(s), microphone lost {status['microphone_losses']} time(s)",
        f"reloads     {status['reloads']} ({status['failed_reloads']} failed)",
        f"process     CPU {_percent(status.get('cpu_percent'))} of one core, RSS {_megabytes(status.get('rss_bytes'))}",
        f"status      {path}, written {format_duration(now - status['written_at'])} ago "
        f"(every {status['status_interval_s']:g} s)",
    ]
    return lines


# --------------------------------------------------------------------------- the file


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """The status as JSON, atomically (readers never see half a file)."""
    from kws.bundle import atomic_write

    atomic_write(path, (json.dumps(status, indent=2) + "\n").encode())


def check_status_file(path: Path) -> None:
    """``ConfigError`` unless a status file can be written at ``path`` (checked at the start of ``kws listen``)."""
    import tempfile

    from kws.errors import ConfigError

    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"cannot write the status file {path}: {error.strerror or error}; give --status-file "
                          "a path you can write to") from None


class StatusError(Exception):
    """``kws status`` found nothing, or something wrong: the one line to print."""


def _read(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text())
    except ValueError as error:
        raise StatusError(f"status file {path} is not valid JSON ({error}): is another program writing it?") from None
    if not isinstance(status, dict) or status.get("format_version") != FORMAT_VERSION:
        raise StatusError(f"status file {path} is not one this kws writes (format_version "
                          f"{status.get('format_version') if isinstance(status, dict) else '?'}, "
                          f"expected {FORMAT_VERSION})")
    missing = sorted(REQUIRED_KEYS - set(status))
    if missing:
        raise StatusError(f"status file {path} lacks {', '.join(missing)}: is another program writing it?")
    return status


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def check_status(status: Mapping[str, Any], path: Path, now: float) -> None:
    """Raises ``StatusError`` unless the status is that of a daemon running now."""
    written = datetime.datetime.fromtimestamp(status["written_at"]).astimezone().isoformat(timespec="seconds")
    age_s = now - status["written_at"]
    if status["state"] == STATE_STOPPED:
        raise StatusError(f"kws is not running: it stopped {format_duration(age_s)} ago, at {written} "
                          f"(status file {path})")
    if not _pid_alive(status["pid"]):
        raise StatusError(f"kws (pid {status['pid']}) is not running: it ended without stopping cleanly after "
                          f"{written} (status file {path}); see `journalctl -u {SERVICE}`")
    interval_s = float(status["status_interval_s"])
    if age_s > STALE_INTERVALS * interval_s:
        raise StatusError(f"status file {path} was last written {format_duration(age_s)} ago, at {written}: more "
                          f"than {STALE_INTERVALS} status intervals of {interval_s:g} s, so kws (pid {status['pid']}) "
                          f"looks stuck or dead; see `systemctl status {SERVICE}` and `journalctl -u {SERVICE}`")


def _systemctl(why: str) -> dict[str, str]:
    """The service's state from ``systemctl show``; ``StatusError`` (starting with ``why``) if there is none."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise StatusError(f"{why}, and no systemctl to ask about the {SERVICE} service: is kws running?")
    try:
        result = subprocess.run([systemctl, "show", SERVICE, "-p", "LoadState,ActiveState,SubState,StatusText,MainPID"],
                                capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StatusError(f"{why}, and systemctl did not answer: {error}") from None
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[0]
        raise StatusError(f"{why}, and systemctl cannot tell about the {SERVICE} service: {said}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if values.get("LoadState") == "not-found":
        raise StatusError(f"{why}, and there is no {SERVICE} service (see README: Run on a Raspberry Pi)")
    if values.get("ActiveState") != "active":
        raise StatusError(f"{why}; the {SERVICE} service is {values.get('ActiveState', '?')} "
                          f"({values.get('SubState', '?')}): see `systemctl status {SERVICE}`")
    return values


def show_status(path: Path | None, as_json: bool, out: IO[str], environ: Mapping[str, str] | None = None,
                now: float | None = None) -> None:
    """``kws status``: print the status file's summary (or ``--json``), or systemd's view of the service.

    Raises ``StatusError`` when there is nothing to show, or the daemon is not running.
    """
    path = path if path is not None else status_file_to_read(environ)
    now = time.time() if now is None else now
    try:
        status = _read(path)
    except FileNotFoundError:
        why = f"no status file {path}"
    except OSError as error:
        why = f"cannot read status file {path}: {error.strerror or error}"
    else:
        check_status(status, path, now)
        if as_json:
            out.write(json.dumps(status, indent=2) + "\n")
        else:
            out.write("\n".join(describe(status, path, now)) + "\n")
        return
    values = _systemctl(why)
    if as_json:
        out.write(json.dumps({"source": "systemctl", "service": SERVICE, **values}, indent=2) + "\n")
        return
    status_text = values.get("StatusText") or "no status text"
    out.write(f"{SERVICE}.service {values.get('ActiveState')} ({values.get('SubState')}), pid "
              f"{values.get('MainPID', '?')}: {status_text}\n({why}: run kws status as a user who can read it, "
              f"or give --status-file)\n")
