"""``kws wyoming``: the real server in a subprocess, real Wyoming clients over TCP, real clips; no mocks.

Streams are built from the test-set clips in ``conftest.KEYWORD_CLIPS`` (the
bundled model detects them at every alignment) between quiet noise, and from
real household noise; they go as 16-bit PCM ``audio-chunk`` events of 1024
samples, as Home Assistant sends them. After ``audio-stop`` a client sends
``describe``: the server answers events of one connection in order, so the
``info`` reply marks the end of what the stream produced.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from conftest import DEFAULT_MODEL, KEYWORD_CLIPS, ROOT, SAMPLE_RATE_HZ, SHARED, one_error_line, read_clip, run_kws
from test_multi import copy_bundle
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.wake import Detect, Detection, NotDetected

from kws.bundle import load_bundle

CHUNK_SAMPLES = 1024
NOISE_FILE = SHARED / "data" / "household_noise" / "aircon_0.flac"
LEAD_S, TAIL_S = 1.0, 2.0
"""Quiet noise before and after a keyword clip."""
LATE_MS = 1200
"""A detection's timestamp is at most this long after the end of its word (window end + smoothing);
less than ``TAIL_S``, so a stream whose clock ran on from the one before would be caught."""
READ_TIMEOUT_S = 60.0
"""Generous: the machine may be busy; nothing here measures speed."""
STARTUP_TIMEOUT_S = 90.0
KEYWORDS = dict(KEYWORD_CLIPS)
"""word -> test-set clip the bundled model detects."""


# --------------------------------------------------------------------------- audio


def quiet_noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.003, int(seconds * SAMPLE_RATE_HZ)).astype(np.float32)


def keyword_audio(*words: str, seed: int = 0) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The words' clips, each after ``LEAD_S`` of quiet noise, then ``TAIL_S``; and (word, start_ms, end_ms)."""
    parts, events, position = [], [], 0
    for i, word in enumerate(words):
        lead, clip = quiet_noise(LEAD_S, seed + i), read_clip(KEYWORDS[word])
        parts += [lead, clip]
        position += lead.size
        events.append((word, 1000 * position // SAMPLE_RATE_HZ, 1000 * (position + clip.size) // SAMPLE_RATE_HZ))
        position += clip.size
    parts.append(quiet_noise(TAIL_S, seed + 100))
    return np.concatenate(parts), events


def household_noise(seconds: float = 4.0) -> np.ndarray:
    audio, rate = sf.read(str(NOISE_FILE), dtype="float32")
    assert rate == SAMPLE_RATE_HZ
    return audio[: int(seconds * rate)]


def pcm16(audio: np.ndarray) -> bytes:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()


def chunk_events(pcm: bytes, rate: int = SAMPLE_RATE_HZ, width: int = 2, channels: int = 1,
                 first_timestamp_ms: int | None = None) -> list:
    """``audio-chunk`` events of ``CHUNK_SAMPLES`` frames, with timestamps if a first one is given."""
    frame = width * channels
    step = CHUNK_SAMPLES * frame
    events = []
    for start in range(0, len(pcm), step):
        timestamp = None if first_timestamp_ms is None else first_timestamp_ms + 1000 * (start // frame) // rate
        events.append(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[start : start + step],
                                 timestamp=timestamp).event())
    return events


# --------------------------------------------------------------------------- server and client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``kws wyoming`` on a free local port, its log in a file."""

    def __init__(self, directory: Path, *args: str):
        self.port = free_port()
        self.log = directory / f"server_{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kws.cli", "wyoming", "--uri", f"tcp://127.0.0.1:{self.port}", *args],
                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"kws wyoming exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"kws wyoming did not listen within {STARTUP_TIMEOUT_S} s: {self.log.read_text()}")
                time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)


async def exchange(client: AsyncTcpClient, events: list) -> list:
    """Send ``events`` (then a ``describe``); the events received up to its ``info``, that excluded."""
    for event in events:
        await client.write_event(event)
        await asyncio.sleep(0)  # let other clients' tasks interleave
    await client.write_event(Describe().event())
    received = []
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
        assert event is not None, f"the server closed the connection; got {received}"
        if Info.is_type(event.type):
            return received
        received.append(event)


def stream_events(pcm: bytes, names: list[str] | None = None, detect: bool = False, **chunk_options) -> list:
    start = [Detect(names=names).event()] if detect or names else []
    return start + [AudioStart(rate=chunk_options.get("rate", SAMPLE_RATE_HZ), width=chunk_options.get("width", 2),
                               channels=chunk_options.get("channels", 1)).event(),
                    *chunk_events(pcm, **chunk_options), AudioStop().event()]


def session(port: int, events: list) -> list:
    """One connection: send ``events``; what came back before the ``info`` barrier."""

    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            return await exchange(client, events)

    return asyncio.run(run())


def summary(events: list) -> list[tuple]:
    """("detection", name, timestamp) / ("not-detected",) / ("error", code) per event."""
    out = []
    for event in events:
        if Detection.is_type(event.type):
            detection = Detection.from_event(event)
            out.append(("detection", detection.name, detection.timestamp))
        elif NotDetected.is_type(event.type):
            out.append(("not-detected",))
        elif Error.is_type(event.type):
            out.append(("error", Error.from_event(event).code))
        else:
            out.append((event.type,))
    return out


def names(events: list) -> list[str]:
    return [row[1] for row in summary(events) if row[0] == "detection"]


def describe(port: int) -> Info:
    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            assert event is not None and Info.is_type(event.type), event
            return Info.from_event(event)

    return asyncio.run(run())


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    running = Server(tmp_path_factory.mktemp("wyoming"))
    yield running
    assert running.stop() == 0, running.log.read_text()[-2000:]


# --------------------------------------------------------------------------- describe


def test_describe_lists_a_wake_model_per_keyword(server):
    info = describe(server.port)
    assert [program.name for program in info.wake] == ["kws"]
    program = info.wake[0]
    assert program.installed and program.attribution.name
    keywords = load_bundle(DEFAULT_MODEL).keywords
    assert len(keywords) == 10
    assert [model.name for model in program.models] == [f"kws12/{k}" for k in keywords]
    for model, keyword in zip(program.models, keywords):
        assert model.installed and model.languages == ["en"] and keyword in model.description
        assert getattr(model, "phrase", keyword) == keyword


# --------------------------------------------------------------------------- detection


def test_each_keyword_is_detected_while_streaming_with_its_name_and_time(server):
    """Home Assistant never sends audio-stop: the detection must come during the stream.

    One connection, one stream per word (audio-start resets it); chunk timestamps in the
    client's time base start at 5000 ms, so the detection's timestamp must be in it too.
    """
    base_ms = 5000

    async def run():
        results = {}
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            for word in KEYWORDS:
                audio, [(_, start_ms, end_ms)] = keyword_audio(word)
                await client.write_event(AudioStart(rate=SAMPLE_RATE_HZ, width=2, channels=1).event())
                for event in chunk_events(pcm16(audio), first_timestamp_ms=base_ms):
                    await client.write_event(event)
                event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)  # before audio-stop
                assert event is not None and Detection.is_type(event.type), (word, event)
                detection = Detection.from_event(event)
                after = await exchange(client, [AudioStop().event()])
                results[word] = (detection.name, detection.timestamp - base_ms, start_ms, end_ms, summary(after))
        return results

    for word, (name, timestamp_ms, start_ms, end_ms, after) in asyncio.run(run()).items():
        assert name == f"kws12/{word}"
        assert start_ms < timestamp_ms <= end_ms + LATE_MS, (word, timestamp_ms, start_ms, end_ms)
        assert after == [], (word, after)  # no second detection, and no not-detected once one fired


def test_household_noise_gives_not_detected(server):
    assert summary(session(server.port, stream_events(pcm16(household_noise())))) == [("not-detected",)]


def test_a_keyword_at_the_very_end_is_found_on_audio_stop(server):
    clip = read_clip(KEYWORDS["stop"])
    audio = np.concatenate([quiet_noise(LEAD_S, 7), clip])
    rows = summary(session(server.port, stream_events(pcm16(audio))))
    assert [row[:2] for row in rows] == [("detection", "kws12/stop")]
    assert rows[0][2] <= 1000 * audio.size // SAMPLE_RATE_HZ  # never past the audio sent


def test_clients_at_once_each_get_their_own_result(server):
    streams = {"yes": pcm16(keyword_audio("yes")[0]), "go": pcm16(keyword_audio("go", seed=3)[0]),
               "noise": pcm16(household_noise())}

    async def one(pcm: bytes):
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            return await exchange(client, stream_events(pcm))

    async def run():
        return await asyncio.gather(*(one(pcm) for pcm in streams.values()))

    yes, go, noise = (summary(events) for events in asyncio.run(run()))
    assert [row[:2] for row in yes] == [("detection", "kws12/yes")]
    assert [row[:2] for row in go] == [("detection", "kws12/go")]
    assert noise == [("not-detected",)]


def test_detect_restricts_the_names_listened_for(server):
    audio, events = keyword_audio("yes", "stop")
    pcm = pcm16(audio)
    assert names(session(server.port, stream_events(pcm))) == ["kws12/yes", "kws12/stop"]
    # a plain keyword is reported by the name asked for, as Home Assistant compares it
    assert names(session(server.port, stream_events(pcm, names=["stop"]))) == ["stop"]
    assert names(session(server.port, stream_events(pcm, names=["kws12/yes"]))) == ["kws12/yes"]
    assert summary(session(server.port, stream_events(pcm, names=["kws12/no"]))) == [("not-detected",)]
    # no name known: an error, and nothing fires
    assert summary(session(server.port, stream_events(pcm, names=["abracadabra"]))) == [
        ("error", "unknown-wake-word"), ("not-detected",)]
    # a detect without names listens for everything again
    assert names(session(server.port, [Detect(names=["kws12/no"]).event(),
                                       *stream_events(pcm, detect=True)])) == ["kws12/yes", "kws12/stop"]


@pytest.mark.parametrize("rate, width, channels", [(48000, 2, 2), (22050, 4, 1), (16000, 3, 1), (44100, 1, 1)])
def test_other_rates_widths_and_channels_are_converted(server, rate, width, channels):
    audio, _ = keyword_audio("yes")
    resampled = resample_poly(audio, rate, SAMPLE_RATE_HZ) if rate != SAMPLE_RATE_HZ else audio
    resampled = np.clip(resampled, -1, 1 - 2 ** -23)
    if width == 1:
        samples = (np.round(resampled * 128) + 128).clip(0, 255).astype(np.uint8)
    elif width == 2:
        samples = np.round(resampled * 32768).astype("<i2")
    elif width == 3:
        value = np.round(resampled * 2 ** 23).astype("<i4")
        samples = value.view(np.uint8).reshape(-1, 4)[:, :3]
    else:
        samples = np.round(resampled.astype(np.float64) * 2 ** 31).clip(-2 ** 31, 2 ** 31 - 1).astype("<i4")
    if channels == 2:  # the word on the left, silence on the right: the mean still carries it
        samples = np.stack([samples, np.zeros_like(samples)], axis=1)
    pcm = np.ascontiguousarray(samples).tobytes()
    rows = summary(session(server.port, stream_events(pcm, rate=rate, width=width, channels=channels)))
    assert [row[:2] for row in rows] == [("detection", "kws12/yes")]


def test_a_bad_audio_format_gets_an_error_and_the_server_carries_on(server):
    rows = summary(session_until_closed(server.port, [AudioStart(rate=16000, width=5, channels=1).event()]))
    assert rows == [("error", "bad-audio-format")]
    assert describe(server.port).wake[0].name == "kws"


def session_until_closed(port: int, events: list) -> list:
    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for event in events:
                await client.write_event(event)
            received = []
            while (event := await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)) is not None:
                received.append(event)
            return received

    return asyncio.run(run())


# --------------------------------------------------------------------------- two models, hooks


def test_two_models_are_announced_and_both_fire_and_run_hooks(tmp_path, shared_data):
    """A 30 s refractory period: a word fires again in the next stream only if audio-start resets the detectors."""
    copy = copy_bundle(tmp_path, "kws12b")
    out = tmp_path / "hooks.txt"
    hook = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'a').write(os.environ['KWS_MODEL'] + ' ' "
            "+ os.environ['KWS_KEYWORD'] + '\\n')", str(out)]
    config = tmp_path / "kws.toml"
    config.write_text(f'[hooks.commands]\n"*" = {json.dumps(hook)}\n')
    running = Server(tmp_path, "--model", "kws12", "--model", str(copy), "--config", str(config),
                     "--refractory-s", "30")
    pcm = pcm16(keyword_audio("yes")[0])

    async def streams():
        async with AsyncTcpClient("127.0.0.1", running.port) as client:
            return [names(await exchange(client, events)) for events in (
                stream_events(pcm),                         # every wake word
                stream_events(pcm, names=["kws12b/yes"]),   # one model's yes
                stream_events(pcm),                         # the choice stays for the next stream
            )]

    try:
        models = [model.name for model in describe(running.port).wake[0].models]
        keywords = load_bundle(DEFAULT_MODEL).keywords
        assert models == [f"kws12/{k}" for k in keywords] + [f"kws12b/{k}" for k in keywords]
        first, chosen, again = asyncio.run(streams())
    finally:
        assert running.stop() == 0
    assert sorted(first) == ["kws12/yes", "kws12b/yes"]
    assert chosen == again == ["kws12b/yes"]
    assert sorted(out.read_text().splitlines()) == ["kws12 yes"] + ["kws12b yes"] * 3
    log = running.log.read_text()
    assert log.count("detected kws12/yes") == 1 and log.count("detected kws12b/yes") == 3


# --------------------------------------------------------------------------- stopping, bad input


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_with_a_client_connected(tmp_path, shared_data, signum):
    running = Server(tmp_path)

    async def run():
        async with AsyncTcpClient("127.0.0.1", running.port) as client:
            await client.write_event(AudioStart(rate=SAMPLE_RATE_HZ, width=2, channels=1).event())
            for event in chunk_events(pcm16(quiet_noise(1.0, 1))):
                await client.write_event(event)
            await client.write_event(Describe().event())  # the chunks have been taken in
            assert Info.is_type((await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)).type)
            running.process.send_signal(signum)
            closed = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            return closed, time.monotonic()

    closed, sent = asyncio.run(run())
    assert closed is None  # the server closed the connection
    returncode = running.process.wait(timeout=30)
    took_s = time.monotonic() - sent
    assert returncode == 0, running.log.read_text()[-2000:]
    assert took_s < 10, took_s  # the aim is under 2 s; the bound only catches a hang on a busy machine
    assert "stopping" in running.log.read_text()


def test_a_port_in_use_is_one_line(shared_data):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(run_kws("wyoming", "--uri", f"tcp://127.0.0.1:{port}"), "kws")
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize("uri, words", [("http://127.0.0.1:10400", "tcp:// or unix://"),
                                        ("tcp://127.0.0.1", "needs a host and a port"),
                                        ("tcp://127.0.0.1:70000", "out of range")])
def test_a_bad_uri_is_one_line(uri, words):
    assert words in one_error_line(run_kws("wyoming", "--uri", uri), "kws")


def test_without_the_wyoming_package_it_says_what_to_install():
    code = "import sys; sys.modules['wyoming'] = None; from kws.cli import main; sys.exit(main(['wyoming']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=120)
    assert "pip install 'kws[wyoming]'" in one_error_line(result, "kws")


# --------------------------------------------------------------------------- PCM decoding


def test_pcm_widths_decode_to_the_same_samples():
    from kws.wyoming_server import PcmConverter, decode_pcm

    reference = np.array([-32768, -12345, -1, 0, 1, 256, 32767], "<i2")
    expected = reference.astype(np.float32) / 32768
    as24 = (reference.astype("<i4") << 8).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    as32 = (reference.astype("<i4") << 16).tobytes()
    np.testing.assert_array_equal(decode_pcm(reference.tobytes(), 2), expected)
    np.testing.assert_array_equal(decode_pcm(as24, 3), expected)
    np.testing.assert_array_equal(decode_pcm(as32, 4), expected)
    np.testing.assert_array_equal(decode_pcm(bytes([0, 128, 255]), 1), np.array([-1, 0, 127 / 128], np.float32))
    # stereo frames split across chunks at odd byte positions come out whole and averaged
    stereo = np.stack([reference, np.zeros_like(reference)], axis=1).tobytes()
    converter = PcmConverter(SAMPLE_RATE_HZ, 2, 2, SAMPLE_RATE_HZ)
    pieces = [converter.convert(stereo[i : i + 3]) for i in range(0, len(stereo), 3)]
    np.testing.assert_array_equal(np.concatenate(pieces), expected / 2)


def test_detections_also_go_to_the_webhook_of_the_config(tmp_path, shared_data):
    """``[webhook]`` (and ``[mqtt]``, built by the same ``configured_actions``) act on Wyoming detections too."""
    from test_webhook import Server as HttpServer

    http = HttpServer()
    config = tmp_path / "kws.toml"
    config.write_text(f'[webhook]\nurl = "{http.url}"\ntimeout_s = 2\n')
    running = Server(tmp_path, "--config", str(config))
    try:
        assert names(session(running.port, stream_events(pcm16(keyword_audio("yes")[0])))) == ["kws12/yes"]
        posted = [json.loads(r["body"]) for r in http.wait_for(1, 10)]
    finally:
        assert running.stop() == 0
        http.stop()
    assert [(d["keyword"], d["model"]) for d in posted] == [("yes", "kws12")]
