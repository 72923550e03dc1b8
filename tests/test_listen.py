"""``kws listen`` on real audio devices, no mocks.

Audio goes through PortAudio (sounddevice) from virtual devices, see ``virtual_audio``:
a private headless PulseAudio whose null sinks' monitors are real-time microphones that
hear what ``paplay`` plays, and ALSA pcm definitions (a 48 kHz-only device; the ``file``
plugin as an unpaced microphone). Raw PCM on stdin is tested as ``arecord | kws listen
--input -`` would feed it.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from conftest import DEFAULT_MODEL, ROOT, SAMPLE_RATE_HZ, keyword_stream, run_kws
from virtual_audio import PulseAudio, alsa_config, pulseaudio_missing, to_int16, write_wav

SINK = "kws_null"          # 16 kHz; its monitor is the default source
SINK48 = "kws_null48"      # 48 kHz
DETECTION_KEYS = {"keyword", "score", "time", "offset_s", "model"}
LATE_S = 1.2
"""A detection's offset is at most this long after the end of its word (window + smoothing)."""
PLAYBACK_START_S = 0.5
"""Allowance for paplay to start and for the sink to pass its first samples to the monitor."""

# PortAudio lists ALSA pcms from the configuration, so these are real devices to it.
# kws48: a plug without a usable rate converter in front of a 48 kHz slave, so any rate
# but 48000 Hz fails when the hw params are installed -- which PortAudio's format check
# does: to sounddevice it is a microphone that does not offer 16 kHz. (PortAudio 19.6
# busy-polls and gets no frames from ALSA plugins stacked on the pulse plugin, so it is
# only probed, never captured from; kws_mic48 is the 48 kHz sink's monitor to capture.)
ALSA_DEVICES = """\
pcm.kws_mic48 {{ type pulse device "{sink48}.monitor" }}
pcm.kws48 {{
    type plug
    slave {{ pcm "kws_mic48" rate 48000 format S16_LE channels 1 }}
    rate_converter "kws_test_no_such_converter"
}}
pcm.kwsfile {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A PulseAudio daemon for this module: sinks at 16 and 48 kHz."""
    reason = pulseaudio_missing()
    if reason:
        pytest.skip(reason)
    daemon = PulseAudio(tmp_path_factory.mktemp("pulse"), {SINK: 16000, SINK48: 48000})
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def stream(shared_data, tmp_path_factory):
    """The keyword stream as int16, a 16 kHz wav of it, and its (word, start_s, end_s) events."""
    audio, events = keyword_stream()
    pcm = to_int16(audio)
    directory = tmp_path_factory.mktemp("stream")
    wav = write_wav(directory / "stream16k.wav", pcm, SAMPLE_RATE_HZ)
    return pcm, wav, events


@pytest.fixture(scope="module")
def model() -> Path:
    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"{DEFAULT_MODEL} not found: the bundled model is needed (train and export it, see README)")
    return DEFAULT_MODEL


@pytest.fixture(scope="module")
def model_name(model) -> str:
    return json.loads(model.read_text())["name"]


@pytest.fixture(scope="module")
def alsa_env(pulse, stream, tmp_path_factory):
    """The PulseAudio env plus the ALSA devices kws48, kws_mic48 and kwsfile."""
    pcm, _, _ = stream
    directory = tmp_path_factory.mktemp("alsa")
    infile = directory / "stream.f32"
    # The file plugin hands over the infile's bytes verbatim in whatever sample format the
    # reader opens (kws opens float32), and after EOF stale ring-buffer data: pad with silence.
    padded = np.concatenate([pcm, np.zeros(10 * SAMPLE_RATE_HZ, np.int16)])
    (padded / np.float32(32768)).astype("<f4").tofile(infile)
    text = ALSA_DEVICES.format(sink48=SINK48, infile=infile)
    return alsa_config(pulse.env, directory / "asoundrc", text)


# --------------------------------------------------------------------------- helpers


class Listener:
    """``kws listen ARGS`` in a subprocess; its stdout and stderr lines collected as they come."""

    def __init__(self, args: list[str], env: dict | None, stdin=subprocess.DEVNULL, command: str = "listen"):
        self.launched = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "kws.cli", command, *args], cwd=ROOT, env=env,
                                        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> float:
        """Wait until a stderr line matches ``pattern``; returns the monotonic time it was seen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                if any(regex.search(line) for line in self.stderr[checked:]):
                    return time.monotonic()
                checked = len(self.stderr)
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"kws listen exited with {self.process.returncode} before logging {pattern!r}:\n"
                                + "\n".join(self.stderr[-30:]))
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"kws listen did not log {pattern!r} within {timeout} s:\n" + "\n".join(self.stderr[-30:]))
                self._changed.wait(0.1)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"kws listen still running {timeout} s later:\n" + "\n".join(l for l in self.stderr if "fell behind" not in l)[-5000:])
        for reader in self._readers:
            reader.join(5)
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def parse_detections(lines: list[str], model_name: str) -> list[dict]:
    detections = []
    for line in lines:
        detection = json.loads(line)
        assert isinstance(detection, dict), line
        assert DETECTION_KEYS <= set(detection), line
        assert isinstance(detection["keyword"], str) and detection["model"] == model_name, line
        assert 0 < detection["score"] <= 1 and detection["offset_s"] >= 0, line
        when = datetime.datetime.fromisoformat(detection["time"])
        assert when.tzinfo is not None, f"time without a UTC offset: {line}"
        detection["time"] = when
        detections.append(detection)
    return detections


def check_live_detections(detections: list[dict], events, launched: float, ready: float, played: float,
                          played_wall: datetime.datetime) -> None:
    """Detections of a live stream whose playback began at ``played`` (monotonic) / ``played_wall``.

    The listener's stream offset 0 is when it started capturing: after it was launched,
    before it said it was ready; so playback began at a stream offset in
    [played - ready, played - launched] (plus the playback start-up latency).
    """
    words = [word for word, _, _ in events]
    assert [d["keyword"] for d in detections] == words, detections
    for d, (word, start, end) in zip(detections, events):
        low = played - ready + start
        high = played - launched + PLAYBACK_START_S + end + LATE_S
        assert low <= d["offset_s"] <= high, f"{word} at offset {d['offset_s']} s, expected in [{low:.2f}, {high:.2f}]"
        # Emitted live, as the word was heard (generous for a loaded machine), not at the end.
        heard = (d["time"] - played_wall).total_seconds()
        assert start <= heard <= end + LATE_S + PLAYBACK_START_S + 2.0, f"{word} reported {heard:.2f} s into playback"
    for (a, b), (e1, e2) in zip(zip(detections, detections[1:]), zip(events, events[1:])):
        expected = e2[2] - e1[2]
        assert abs((b["offset_s"] - a["offset_s"]) - expected) <= 1.0, (detections, events)


def check_file_detections(detections: list[dict], events) -> None:
    assert [d["keyword"] for d in detections] == [word for word, _, _ in events], detections
    for d, (word, start, end) in zip(detections, events):
        assert start <= d["offset_s"] <= end + LATE_S, f"{word} at {d['offset_s']} s; the word is at {start:.2f}-{end:.2f} s"


def now_wall() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


# --------------------------------------------------------------------------- 1. live microphone


def test_listen_on_live_microphone(pulse, stream, model, model_name):
    """kws listen on the default input (the 16 kHz null sink's monitor) while the stream plays in real time."""
    _, wav, events = stream
    with Listener(["--model", str(model)], pulse.env) as listener:
        ready = listener.wait_for_log(r"listening on microphone \d+: default at 16000 Hz")
        played, played_wall = time.monotonic(), now_wall()
        pulse.play(wav, SINK)
        time.sleep(0.5)  # the monitor's latency: let the last samples reach kws
        assert listener.terminate() == 0, "\n".join(listener.stderr)
    assert not any("resampling" in line for line in listener.stderr)
    assert any("stopping" in line for line in listener.stderr)
    detections = parse_detections(listener.stdout, model_name)
    check_live_detections(detections, events, listener.launched, ready, played, played_wall)


# --------------------------------------------------------------------------- 2. 48 kHz device

RESAMPLING_SCRIPT = r"""
import json, logging, sys, threading
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from kws.bundle import load_bundle
from kws.sources import MicrophoneSource
from kws.spotter import KeywordSpotter, detector_settings_for

args = json.loads(sys.argv[1])
# A microphone that refuses 16 kHz: kws must pick its 48 kHz and resample (probe only, see ALSA_DEVICES).
probe = MicrophoneSource(args["probe"], 16000)
print(json.dumps({"probe_rate_hz": probe.device_rate_hz, "probe_resamples": probe._resampler is not None}), flush=True)
bundle = load_bundle(args["model"])
spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
source = MicrophoneSource(args["device"], 16000, device_rate_hz=48000)
source.start()
print(json.dumps({"ready": True, "device_rate_hz": source.device_rate_hz, "stream_rate_hz": source._stream.samplerate,
                  "resampler": [source._resampler.from_hz, source._resampler.to_hz]}), flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
samples = 0
for chunk in source.chunks():
    samples += chunk.size
    for detection in spotter.feed(chunk):
        print(json.dumps(detection.to_dict()), flush=True)
    if stop.is_set():
        break
source.close()
print(json.dumps({"samples": samples, "overruns": source.overruns}), flush=True)
"""


def test_microphone_at_48khz_is_resampled(pulse, alsa_env, stream, model, model_name, tmp_path):
    """A 48 kHz microphone: kws captures at 48 kHz and resamples to the model's 16 kHz."""
    pcm, _, events = stream
    wav48 = write_wav(tmp_path / "stream48k.wav", to_int16(resample_poly(pcm / 32768.0, 3, 1)), 48000)
    args = {"probe": "kws48", "device": "kws_mic48", "model": str(model)}
    launched = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", RESAMPLING_SCRIPT, json.dumps(args)], cwd=ROOT, env=alsa_env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        probe = json.loads(process.stdout.readline() or "null")
        info = json.loads(process.stdout.readline() or "null")
        ready = time.monotonic()
        assert probe and info, process.communicate(timeout=30)[1]
        played, played_wall = time.monotonic(), now_wall()
        pulse.play(wav48, SINK48)
        time.sleep(0.5)
        out, err = process.communicate("", timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "kws48 does not offer 16000 Hz; capturing at 48000 Hz and resampling" in err
    assert probe == {"probe_rate_hz": 48000, "probe_resamples": True}
    assert info == {"ready": True, "device_rate_hz": 48000, "stream_rate_hz": 48000, "resampler": [48000, 16000]}
    lines = out.splitlines()
    summary = json.loads(lines[-1])
    assert summary["overruns"] == 0
    detections = parse_detections(lines[:-1], model_name)
    check_live_detections(detections, events, launched, ready, played, played_wall)


# --------------------------------------------------------------------------- 3. bounded queue

OVERRUN_SCRIPT = r"""
import json, sys, threading, time
import numpy as np
from kws.sources import MicrophoneSource

args = json.loads(sys.argv[1])
source = MicrophoneSource(args["device"], 16000, queue_s=args["queue_s"])
source.start()
deadline = time.monotonic() + 10
while not source._queue and time.monotonic() < deadline:
    time.sleep(0.002)
first_block = time.monotonic()
longest, watching = [0], threading.Event()
def watch():
    while not watching.is_set():
        longest[0] = max(longest[0], len(source._queue))
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
print("ready", flush=True)
time.sleep(args["pause_s"])  # the consumer is busy elsewhere: nobody reads the microphone
overruns_at_read, paused_s = source.overruns, time.monotonic() - first_block
got, samples = [], 0
for chunk in source.chunks():
    got.append(chunk)
    samples += chunk.size
    if samples >= args["read_s"] * 16000:
        break
watching.set()
source.close()
np.save(args["out"], np.concatenate(got))
print(json.dumps({"maxlen": source._queue.maxlen, "longest": longest[0], "overruns_at_read": overruns_at_read,
                  "paused_s": paused_s}), flush=True)
"""


def test_stalled_consumer_drops_oldest_blocks(pulse, tmp_path):
    """Nobody reads a real-time microphone for 2 s: the queue stays bounded, the oldest audio goes."""
    pause_s, queue_s, read_s = 2.0, 0.5, 1.0
    # A ramp: sample i holds 1 + i // 16, so every captured sample tells where in the playback it is.
    ramp = (1 + np.arange(int(3.5 * SAMPLE_RATE_HZ)) // 16).astype(np.int16)
    wav = write_wav(tmp_path / "ramp.wav", ramp, SAMPLE_RATE_HZ)
    out = tmp_path / "captured.npy"
    args = {"device": "pulse", "queue_s": queue_s, "pause_s": pause_s, "read_s": read_s, "out": str(out)}
    process = subprocess.Popen([sys.executable, "-c", OVERRUN_SCRIPT, json.dumps(args)], cwd=ROOT, env=pulse.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready", process.communicate(timeout=30)[1]
        player = threading.Thread(target=pulse.play, args=(wav, SINK))
        player.start()
        out_text, err = process.communicate(timeout=30)
        player.join(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    report = json.loads(out_text.splitlines()[-1])
    maxlen = report["maxlen"]
    assert maxlen == 25
    assert report["longest"] == maxlen, report  # it filled up, and never held more
    # 50 blocks a second arrived while nobody read; all but the newest maxlen were dropped, and counted.
    overruns = report["overruns_at_read"]
    assert abs(overruns - (report["paused_s"] * 50 + 1 - maxlen)) <= 5, report

    captured = np.round(np.load(out) * 32768).astype(np.int64)
    assert captured.size >= read_s * SAMPLE_RATE_HZ
    # The first sample read is from late in the playback (queue_s before the read), not from its start:
    first_s = (int(captured[0]) - 1) / 1000  # its position in the ramp
    assert pause_s - queue_s - 0.5 <= first_s <= pause_s - queue_s + 0.1, f"first sample read is {first_s} s into the ramp"
    # ... exactly the dropped blocks are missing: the silence before playback began (< PLAYBACK_START_S)
    # and the ramp up to the first sample read.
    silence_s = overruns * 0.020 - first_s
    assert -0.040 <= silence_s <= PLAYBACK_START_S, (overruns, first_s)
    # ... and from there on it is the ramp without a gap, in order: the newest blocks were all kept.
    steps = np.diff(captured)
    assert set(np.unique(steps).tolist()) <= {0, 1}, np.unique(steps)
    changes = np.flatnonzero(steps) + 1
    assert np.all(np.diff(changes) == 16), "samples missing or repeated after the first read"


def test_listen_reports_dropped_blocks_on_unpaced_microphone(alsa_env, model):
    """The ALSA file plugin delivers audio faster than real time: kws falls behind, says so, keeps going."""
    with Listener(["--model", str(model), "--device", "kwsfile"], alsa_env) as listener:
        listener.wait_for_log(r"listening on microphone \d+: kwsfile at 16000 Hz")
        listener.wait_for_log(r"fell behind the microphone: \d+ audio block\(s\) dropped so far", timeout=15)
        assert listener.terminate() == 0, "\n".join(listener.stderr[-20:])
    dropped = [int(m.group(1)) for line in listener.stderr
               if (m := re.search(r"fell behind the microphone: (\d+) audio block", line))]
    assert dropped[0] > 0 and dropped == sorted(dropped), dropped[:10]
    assert not any("Traceback" in line for line in listener.stderr)


# --------------------------------------------------------------------------- 4. raw PCM on stdin


def test_listen_raw_pcm_on_stdin(stream, model, model_name):
    """``arecord -f S16_LE -r 16000 -c 1 | kws listen --input -``, in one write and in odd-sized pieces."""
    pcm, _, events = stream
    data = pcm.astype("<i2").tobytes()
    result = run_kws("listen", "--model", str(model), "--input", "-", input=data, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    whole = parse_detections(result.stdout.decode().splitlines(), model_name)
    check_file_detections(whole, events)

    # The same bytes in pieces of 1, 3 and 1001 bytes, each written once kws waits for input,
    # so its reads return them as they are: samples split across reads.
    with Listener(["--model", str(model), "--input", "-"], None, stdin=subprocess.PIPE) as listener:
        listener.wait_for_log(r"reading raw 16-bit PCM on stdin")
        pipe = listener.process.stdin.buffer
        position, sizes = 0, itertools.cycle((1, 3, 1001))
        while position < len(data):
            size = next(sizes)
            pipe.write(data[position : position + size])
            pipe.flush()
            position += size
            time.sleep(0.001)
        listener.process.stdin.close()
        assert listener.wait(timeout=60) == 0, "\n".join(listener.stderr)
    pieces = parse_detections(listener.stdout, model_name)
    check_file_detections(pieces, events)
    strip = lambda ds: [(d["keyword"], d["offset_s"], d["score"]) for d in ds]  # noqa: E731
    assert strip(pieces) == strip(whole)


# --------------------------------------------------------------------------- 5. devices


def test_devices_lists_virtual_microphones(alsa_env):
    result = run_kws("devices", "--json", env=alsa_env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    rows = {row["name"]: row for row in map(json.loads, result.stdout.decode().splitlines())}
    assert {"pulse", "default", "kws48", "kws_mic48", "kwsfile"} <= set(rows), rows
    assert rows["kws48"]["default_samplerate_hz"] == 48000 and rows["kws48"]["channels"] >= 1
    assert [name for name, row in rows.items() if row["default"]] == ["default"]
    text = run_kws("devices", env=alsa_env, timeout=60)
    assert text.returncode == 0
    marked = [line for line in text.stdout.decode().splitlines() if line.startswith("*")]
    assert len(marked) == 1 and re.match(r"\*\s+\d+\s+default\s+\(", marked[0]), marked


def test_listen_unknown_device_is_one_line_error(pulse, model):
    result = run_kws("listen", "--model", str(model), "--device", "no-such-mic", env=pulse.env, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kws: error: no input device matches 'no-such-mic': "), lines
    assert result.stdout == b""


# --------------------------------------------------------------------------- 6. vanished microphone
# kws no longer exits when the microphone goes away: it waits for it and goes on (issue 5);
# tests/test_daemon.py::test_microphone_loss_is_waited_out_without_a_restart covers both ways
# it can go (audio server killed, sink suspended).
