"""The live part of ``bench_runtime.py``: ``kws listen`` on a virtual microphone.

A private headless PulseAudio (``tests/virtual_audio.py``'s ``PulseAudio``) whose null
sink's monitor is the default microphone; the installed ``kws listen`` with a config
whose hook appends ``date +%s.%N`` and the keyword to a file; the ``live`` stream played
into the sink with ``paplay``. The stream starts with a click that ``parec`` on the same
monitor dates on the wall clock, so every keyword's end is known on that clock wherever
paplay starts. Measured:

* latency from the end of a keyword's speech to its hook's start, and to the detection's
  ``time`` (the JSON line), for each keyword heard;
* start to listening: spawn to ``READY=1`` on ``$NOTIFY_SOCKET`` (as systemd sees it),
  once per launch;
* peak RSS (``VmHWM``) just before SIGTERM, after the stream; CPU share (utime + stime)
  while the stream played.

The click's time is the lower envelope of (read time - samples so far / rate) over
parec's reads, so the latencies leave out at most parec's smallest delivery delay.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

from bench_runtime_engines import SAMPLE_RATE_HZ, BenchError
from bench_runtime_streams import CLICK_THRESHOLD, Stream, match_keywords

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SINK = "kws_bench"
READY_TIMEOUT_S = 90.0
"""Loading the model and opening the microphone, on a loaded machine."""
SETTLE_S = 1.0
"""After READY, before playing."""
HOOK = 'echo "$(date +%s.%N) $KWS_KEYWORD $KWS_OFFSET_S" >> "$KWS_BENCH_HOOKS"'


def pulseaudio_missing() -> str | None:
    """Why the live part cannot run here, or None."""
    return _virtual_audio().pulseaudio_missing()


def _virtual_audio():
    """``tests/virtual_audio.py``, which the tests use for the same microphone."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import virtual_audio

    return virtual_audio


class MonitorRecorder:
    """``parec`` of a PulseAudio source: its samples and the wall-clock time of each read, to date a sound."""

    def __init__(self, env: dict, source: str):
        self.process = subprocess.Popen(
            ["parec", f"--device={source}", "--raw", "--format=s16le", f"--rate={SAMPLE_RATE_HZ}", "--channels=1",
             "--latency-msec=10"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.data = bytearray()
        self.reads: list[tuple[float, int]] = []
        """(time.time() right after a read, bytes read so far)."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self.process.stdout.fileno()
        while True:
            block = os.read(fd, 8192)
            if not block:
                return
            self.data += block
            self.reads.append((time.time(), len(self.data)))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(5)

    def time_of_first(self, threshold: float) -> float | None:
        """Wall-clock time of the first sample louder than ``threshold`` (full scale 1), or None.

        The source runs on the system clock, so sample ``n`` arrived at ``t0 + n / rate``; ``t0`` is
        the lower envelope of (read time - samples read / rate), as a read comes after its samples.
        """
        samples = np.frombuffer(bytes(self.data[: len(self.data) // 2 * 2]), "<i2")
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold * 32768)
        if loud.size == 0 or not self.reads:
            return None
        t0 = min(at - (count // 2) / SAMPLE_RATE_HZ for at, count in self.reads)
        return t0 + loud[0] / SAMPLE_RATE_HZ


def _kws_command() -> list[str]:
    """The installed ``kws`` beside this interpreter, else ``python -m kws.cli``."""
    script = Path(sys.executable).parent / "kws"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kws.cli"]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


class Listening:
    """``kws listen ARGS`` with ``$NOTIFY_SOCKET`` on a socket of ours; ``ready_s``: spawn to ``READY=1``.

    stdout lines (the detections) are collected in ``stdout``; stderr is appended to ``log``.
    """

    def __init__(self, args: list[str], env: dict, work: Path, log: Path):
        self.notify_path = work / f"notify-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.log_path = log
        self.stdout: list[str] = []
        with open(log, "a") as stderr:
            spawned = time.monotonic()
            self.process = subprocess.Popen([*_kws_command(), "listen", *args], cwd=ROOT,
                                            env=dict(env, NOTIFY_SOCKET=str(self.notify_path)),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready_s = self._wait_ready(spawned)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.stdout.append(line.strip())

    def _wait_ready(self, spawned: float) -> float:
        while time.monotonic() < spawned + READY_TIMEOUT_S:
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                if self.process.poll() is not None:
                    self.stop()
                    raise BenchError(f"kws listen exited with {self.process.returncode} before it was ready; "
                                     f"see {self.log_path}") from None
                continue
            if b"READY=1" in message.split(b"\n"):
                return time.monotonic() - spawned
        self.stop()
        raise BenchError(f"kws listen not ready within {READY_TIMEOUT_S:g} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, as systemd stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)


def _spread_ms(values: list[float]) -> dict:
    return {"median": 1000 * statistics.median(values), "p90": 1000 * float(np.percentile(values, 90)),
            "min": 1000 * min(values), "max": 1000 * max(values)}


def measure_live(stream: Stream, model: str | None, launches: int, out: Path) -> dict:
    """``kws listen`` hearing ``stream`` on a virtual microphone, then ``launches - 1`` more start-ups."""
    virtual_audio = _virtual_audio()
    log = out / "listen.log"
    log.write_text("")
    model_args = ["--model", str(model)] if model else []
    with tempfile.TemporaryDirectory(prefix="kws-bench-") as work_dir:
        work = Path(work_dir)
        hooks_file, config = work / "hooks.txt", work / "kws.toml"
        config.write_text(f'[hooks.commands]\n"*" = ["sh", "-c", {json.dumps(HOOK)}]\n')
        pulse = virtual_audio.PulseAudio(work / "pulse", {SINK: SAMPLE_RATE_HZ})
        try:
            env = dict(pulse.env, KWS_BENCH_HOOKS=str(hooks_file))
            monitor = MonitorRecorder(pulse.env, f"{SINK}.monitor")
            try:
                listener = Listening(["--config", str(config), *model_args], env, work, log)
                try:
                    time.sleep(SETTLE_S)
                    ticks, started = _cpu_ticks(listener.process.pid), time.monotonic()
                    _LOGGER.info("playing %s (%.0f s) into the virtual microphone", stream.wav.name, stream.seconds)
                    play_called = time.time()
                    pulse.play(stream.wav, SINK, timeout=stream.seconds + 60)
                    played_s = time.monotonic() - started
                    cpu_s = (_cpu_ticks(listener.process.pid) - ticks) / os.sysconf("SC_CLK_TCK")
                    peak_rss_kb = _vm_hwm_kb(listener.process.pid)
                finally:
                    listener.stop()
            finally:
                monitor.stop()
            startups = [listener.ready_s]
            for _ in range(launches - 1):
                again = Listening(model_args, env, work, log)
                again.stop()
                startups.append(again.ready_s)
        finally:
            pulse.stop()
        hooks = [line.split() for line in hooks_file.read_text().splitlines()] if hooks_file.exists() else []
    click_at = monitor.time_of_first(CLICK_THRESHOLD)
    if click_at is None:
        raise BenchError("the click at the start of the live stream never reached the monitor (parec)")
    shift_s = click_at - stream.click_s  # wall-clock time of the stream's start
    hook_found, hook_other = match_keywords(stream.keywords, [(f[1], float(f[0])) for f in hooks if len(f) >= 2],
                                            shift_s)
    detections = [json.loads(line) for line in listener.stdout if line.startswith("{")]
    detection_found, _ = match_keywords(
        stream.keywords, [(d["keyword"], datetime.datetime.fromisoformat(d["time"]).timestamp()) for d in detections],
        shift_s)
    summary = {"played": len(stream.keywords), "heard": len(hook_found), "other_detections": hook_other,
               "hook_latency_s": [hook_found[i] for i in sorted(hook_found)],
               "detection_latency_s": [detection_found[i] for i in sorted(detection_found)],
               "startup_s": startups, "startup_ms": 1000 * statistics.median(startups),
               "peak_rss_mb": peak_rss_kb / 1024, "core_percent_realtime": 100 * cpu_s / played_s,
               "click_after_play_call_s": click_at - play_called - stream.click_s,
               "stream": str(stream.wav), "stream_seconds": stream.seconds}
    for name in ("hook", "detection"):
        if summary[f"{name}_latency_s"]:
            summary[f"{name}_latency_ms"] = _spread_ms(summary[f"{name}_latency_s"])
    return summary


PLAIN_ALSA_HOOK_DIRS = ('"/var/lib/alsa/conf.d"', '"/usr/etc/alsa/conf.d"', '"/etc/alsa/conf.d"')
"""The lines of alsa.conf that load the desktop plugins' configuration (libasound2-plugins: PulseAudio, JACK,
the ffmpeg-based a52 and lavrate): PortAudio's device probe opens them and maps their libraries."""
PLAIN_ALSA_SETTLE_S = 3.0


def measure_plain_alsa(stream: Stream, model: str | None, launches: int, out: Path) -> dict:
    """Peak RSS and start to listening of ``kws listen`` on plain ALSA, as on Raspberry Pi OS Lite.

    alsa.conf without the conf.d directories, and the ALSA ``file`` plugin as the default
    microphone, reading ``stream``'s samples (unpaced: it delivers as fast as kws reads, so
    CPU figures mean nothing here; memory and start-up do).
    """
    alsa_conf = Path("/usr/share/alsa/alsa.conf")
    if not alsa_conf.is_file():
        return {"skipped": f"{alsa_conf} not found (no ALSA)"}
    text = alsa_conf.read_text()
    missing = [d for d in PLAIN_ALSA_HOOK_DIRS if d not in text]
    if missing:
        return {"skipped": f"{alsa_conf} does not load {', '.join(missing)} as expected"}
    for directory in PLAIN_ALSA_HOOK_DIRS:
        text = "\n".join(line for line in text.splitlines() if line.strip() != directory)
    log = out / "listen-plain-alsa.log"
    log.write_text("")
    model_args = ["--model", str(model)] if model else []
    with tempfile.TemporaryDirectory(prefix="kws-bench-alsa-") as work_dir:
        work = Path(work_dir)
        raw = work / "stream.raw"
        with wave.open(str(stream.wav)) as wav:
            raw.write_bytes(wav.readframes(wav.getnframes()))
        (work / "alsa.conf").write_text(text + "\n")
        (work / "mic.conf").write_text(
            f'pcm.kwsfile {{\n type file\n slave.pcm "null"\n file "/dev/null"\n infile "{raw}"\n format "raw"\n}}\n'
            'pcm.!default "kwsfile"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_"))}
        env.update(ALSA_CONFIG_PATH=f"{work / 'alsa.conf'}:{work / 'mic.conf'}", HOME=str(work))
        startups, peaks = [], []
        for _ in range(max(1, launches)):
            listener = Listening(model_args, env, work, log)
            try:
                time.sleep(PLAIN_ALSA_SETTLE_S)
                peaks.append(_vm_hwm_kb(listener.process.pid) / 1024)
            finally:
                listener.stop()
            startups.append(listener.ready_s)
    return {"startup_s": startups, "startup_ms": 1000 * statistics.median(startups),
            "peak_rss_mb": statistics.median(peaks), "peak_rss_mb_runs": peaks}
