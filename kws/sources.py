"""Audio sources: microphone, file, raw PCM on stdin. Each yields float32 mono chunks at 16 kHz.

Every source has the same small interface: iterate ``chunks()``; ``close()``.
They register themselves in ``SOURCES`` by the kind of ``--input`` they serve.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from kws.audio_file import read_audio
from kws.errors import AudioError
from kws.resample import StreamingResampler

_LOGGER = logging.getLogger(__name__)

CHUNK_MS = 20.0
"""Size of the chunks a file or stdin source yields."""


class FileSource:
    """A whole audio file, decoded and resampled up front, then given out in chunks."""

    def __init__(self, path: str | Path, sample_rate_hz: int, chunk_ms: float = CHUNK_MS):
        self.path = Path(path)
        self.sample_rate_hz = sample_rate_hz
        self.audio = read_audio(self.path, sample_rate_hz)
        self._chunk = max(1, int(sample_rate_hz * chunk_ms / 1000))
        self.description = f"file {self.path}"

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.audio.size, self._chunk):
            yield self.audio[start : start + self._chunk]

    def close(self) -> None:
        pass


class RawPcmSource:
    """Raw signed 16-bit little-endian mono PCM at the model's rate, e.g. from ``arecord -f S16_LE -r 16000 -c 1``."""

    def __init__(self, stream: BinaryIO | None, sample_rate_hz: int, chunk_ms: float = CHUNK_MS):
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.sample_rate_hz = sample_rate_hz
        self._bytes = 2 * max(1, int(sample_rate_hz * chunk_ms / 1000))
        self.description = "raw 16-bit PCM on stdin"

    def chunks(self) -> Iterator[np.ndarray]:
        remainder = b""
        while True:
            data = self.stream.read1(self._bytes) if hasattr(self.stream, "read1") else self.stream.read(self._bytes)
            if not data:
                return
            data = remainder + data
            usable = len(data) - len(data) % 2
            remainder = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], "<i2").astype(np.float32) / 32768.0

    def close(self) -> None:
        pass


def _sounddevice():
    try:
        import sounddevice
    except OSError as error:  # PortAudio library missing
        raise AudioError(f"cannot use audio devices: {error}; install PortAudio (apt-get install libportaudio2)") from None
    return sounddevice


def refresh_devices() -> None:
    """Make PortAudio list the devices anew, e.g. a USB microphone plugged in (again) since kws started.

    PortAudio reads its device list once, when it is initialised, and has no call to
    refresh it (its "hotplug" branch was never released). sounddevice has no public
    one either; its maintainer's advice (spatialaudio/python-sounddevice issues #125,
    #516) is to terminate and initialise PortAudio again, ``sd._terminate()`` then
    ``sd._initialize()``, which this does. That ends every open stream of the process:
    call it only with no stream open.
    """
    sd = _sounddevice()
    try:
        while sd._initialized > 0:
            sd._terminate()
        sd._initialize()
    except sd.PortAudioError as error:
        raise AudioError(f"cannot list the audio devices: {error}") from None


def input_devices() -> list[dict]:
    """Input-capable devices as sounddevice reports them, each with its ``index``."""
    sd = _sounddevice()
    return [dict(d, index=i) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def find_input_device(spec: str | int | None) -> dict:
    """An input device by index, or by a case-insensitive substring of its name; None = the default."""
    sd = _sounddevice()
    devices = input_devices()
    if not devices:
        raise AudioError("no input device found: plug in a microphone, then see `kws devices`")
    if spec is None or spec == "":
        try:
            default = sd.default.device[0]
            if default is None or default < 0:
                default = sd.query_devices(kind="input")["index"]
        except Exception:  # PortAudio has no default input
            default = devices[0]["index"]
        return next((d for d in devices if d["index"] == default), devices[0])
    if isinstance(spec, int) or str(spec).isdigit():
        found = [d for d in devices if d["index"] == int(spec)]
        if not found:
            raise AudioError(f"no input device with index {spec}: see `kws devices`")
        return found[0]
    found = [d for d in devices if str(spec).lower() in d["name"].lower()]
    if not found:
        raise AudioError(f"no input device matches {spec!r}: see `kws devices`")
    exact = [d for d in found if d["name"].lower() == str(spec).lower()]
    if len(found) > 1 and len(exact) != 1:
        names = "; ".join(f"{d['index']}: {d['name']}" for d in found)
        raise AudioError(f"input device {spec!r} is ambiguous ({names}): give the index or more of the name")
    return exact[0] if exact else found[0]


class MicrophoneSource:
    """A sounddevice input stream. The callback only copies and enqueues.

    The queue holds at most ``queue_s`` of audio; when the consumer falls behind,
    the oldest block is dropped and counted in ``overruns``, so latency cannot grow.
    The device's own rate is used when it cannot do ``sample_rate_hz``; channels
    are averaged to mono; both happen on the consumer side.

    ``device_rate_hz``, when given, opens the device at that rate (mono) instead of
    the rate chosen by probing; the audio is then resampled to ``sample_rate_hz``.
    """

    def __init__(self, device: str | int | None, sample_rate_hz: int, block_ms: float = 20.0,
                 queue_s: float = 2.0, stall_s: float = 5.0, device_rate_hz: int | None = None):
        self._sd = _sounddevice()
        self.device = find_input_device(device)
        self.sample_rate_hz = sample_rate_hz
        self.stall_s = stall_s
        self.channels = 1
        self.device_rate_hz = int(device_rate_hz) if device_rate_hz else self._pick_rate()
        self.block = max(1, int(self.device_rate_hz * block_ms / 1000))
        self._queue: collections.deque = collections.deque(maxlen=max(2, int(queue_s * 1000 / block_ms)))
        self._ready = threading.Event()
        self.overruns = 0
        """Blocks dropped because the consumer was behind."""
        self.device_overflows = 0
        """Times PortAudio reported an input overflow."""
        self._resampler = None
        if self.device_rate_hz != sample_rate_hz:
            self._resampler = StreamingResampler(self.device_rate_hz, sample_rate_hz)
        self.description = f"microphone {self.device['index']}: {self.device['name']}"
        self._stream = None

    def _pick_rate(self) -> int:
        index = self.device["index"]
        for channels in (1, min(2, self.device["max_input_channels"]), self.device["max_input_channels"]):
            for rate in (self.sample_rate_hz, int(self.device["default_samplerate"])):
                try:
                    self._sd.check_input_settings(device=index, channels=channels, samplerate=rate, dtype="float32")
                except Exception:  # PortAudioError or ValueError: this combination is not offered
                    continue
                self.channels = channels
                if rate != self.sample_rate_hz:
                    _LOGGER.info("%s does not offer %d Hz; capturing at %d Hz and resampling",
                                 self.device["name"], self.sample_rate_hz, rate)
                return rate
        raise AudioError(f"input device {self.device['name']!r} accepts neither {self.sample_rate_hz} Hz "
                         f"nor its default rate: check it with `arecord -l` / `kws devices`")

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.device_overflows += 1
        if len(self._queue) == self._queue.maxlen:
            self.overruns += 1
        self._queue.append(indata.copy())
        self._ready.set()

    def start(self, log_level: int = logging.INFO) -> None:
        """Open the stream; the "listening on" line is logged at ``log_level`` (retries log at debug)."""
        try:
            self._stream = self._sd.InputStream(
                device=self.device["index"], channels=self.channels, samplerate=self.device_rate_hz,
                blocksize=self.block, dtype="float32", callback=self._callback)
            self._stream.start()
        except self._sd.PortAudioError as error:
            raise AudioError(f"cannot open {self.description}: {error}") from None
        _LOGGER.log(log_level, "listening on %s at %d Hz, %d channel(s)", self.description, self.device_rate_hz,
                    self.channels)

    def chunks(self) -> Iterator[np.ndarray]:
        if self._stream is None:
            self.start()
        last_audio = time.monotonic()
        while True:
            if not self._ready.wait(timeout=0.5):
                stalled = time.monotonic() - last_audio
                if not self._stream.active or stalled > self.stall_s:
                    raise AudioError(f"{self.description} stopped delivering audio "
                                     f"(unplugged or taken by another program?)")
                continue
            self._ready.clear()
            while self._queue:
                block = self._queue.popleft()
                last_audio = time.monotonic()
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                yield self._resampler.process(mono) if self._resampler else mono

    def drain(self) -> None:
        """Discard audio captured but not read yet (what arrived while the consumer was busy elsewhere)."""
        self._queue.clear()

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.abort()
                self._stream.close()
            except self._sd.PortAudioError as error:
                _LOGGER.debug("closing %s: %s", self.description, error)
            self._stream = None


def open_source(spec: str | None, sample_rate_hz: int, device: str | None = None, block_ms: float = 20.0):
    """``--input``: None = microphone (delivering blocks of ``block_ms``), ``-`` = raw PCM on stdin, else an
    audio file."""
    if spec is None:
        return MicrophoneSource(device, sample_rate_hz, block_ms=block_ms)
    if spec == "-":
        return RawPcmSource(None, sample_rate_hz)
    return FileSource(spec, sample_rate_hz)
