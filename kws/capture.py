"""Saving the audio around each detection, to review false activations and train on them as negatives.

``ClipCollector`` runs in the consumer loop beside the spotter: it keeps a ring
of recent audio, and once a detection's post-roll has arrived it hands out a
``DetectionClip``. ``ClipWriter`` is an action on the ``Dispatcher`` thread that
writes each clip as ``DIR/<UTC time>_<model>_<keyword>_<score>.wav`` (16-bit
mono PCM, atomically) and appends a line to ``DIR/detections.jsonl``.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from kws.audio_file import wav_bytes
from kws.bundle import atomic_write
from kws.detector import Detection
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

LOG_NAME = "detections.jsonl"
"""One JSON line per saved clip, in the capture folder."""
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class CaptureSettings:
    """Where and how much audio to keep around each detection."""

    directory: Path
    """Folder for the clips and ``detections.jsonl``; created if missing."""
    sample_rate_hz: int = 16000
    """Rate of the audio stream (and of the clips)."""
    pre_roll_s: float = 1.5
    """Audio kept before the detection time (the end of the window that fired); ``for_spotter`` makes it at
    least everything the detection depended on."""
    post_roll_s: float = 0.5
    """Audio kept after it; a clip is written once this much has arrived, or at the end of the stream."""

    @classmethod
    def for_spotter(cls, directory: Path, spotter) -> "CaptureSettings":
        """Settings for a ``MultiSpotter``'s detections: its rate, and a pre-roll of at least its ``heard_s``."""
        return cls(directory, sample_rate_hz=spotter.sample_rate_hz,
                   pre_roll_s=max(cls.pre_roll_s, round(spotter.heard_s, 3)))

    @property
    def pre_roll_samples(self) -> int:
        return int(round(self.pre_roll_s * self.sample_rate_hz))

    @property
    def post_roll_samples(self) -> int:
        return int(round(self.post_roll_s * self.sample_rate_hz))


@dataclass(frozen=True)
class DetectionClip:
    """A detection and the audio around it."""

    detection: Detection
    audio: np.ndarray = field(repr=False)
    """float32 mono at ``sample_rate_hz``."""
    sample_rate_hz: int
    start_s: float
    """Stream position of the clip's first sample."""


class AudioRing:
    """The most recent audio of a stream, by stream position; holds at least ``capacity`` samples before the newest chunk.

    ``start`` is the stream position of the first sample appended (a ring made mid-stream).
    """

    def __init__(self, capacity: int, start: int = 0):
        self.capacity = capacity
        self.start = start
        self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()

    @property
    def end(self) -> int:
        """Stream position after the newest sample: ``start`` plus the samples appended."""
        if not self._chunks:
            return self.start
        start, chunk = self._chunks[-1]
        return start + chunk.size

    def append(self, chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        before = self.end
        self._chunks.append((before, np.array(chunk, np.float32).reshape(-1)))
        while len(self._chunks) > 2 and before - self._chunks[1][0] >= self.capacity:
            self._chunks.popleft()

    def read(self, start: int, end: int) -> tuple[int, np.ndarray]:
        """The held audio in ``[start, end)``: ``(position of its first sample, samples)``."""
        parts = []
        first = None
        for position, chunk in self._chunks:
            low, high = max(start, position), min(end, position + chunk.size)
            if low < high:
                first = low if first is None else first
                parts.append(chunk[low - position : high - position])
        if not parts:
            return max(start, 0), np.zeros(0, np.float32)
        return first, np.concatenate(parts)


class ClipCollector:
    """Consumer side: ``feed`` each chunk with the detections it gave; get the clips that are complete.

    ``start_sample`` is the stream position of the first chunk fed (a collector made mid-stream).
    """

    def __init__(self, settings: CaptureSettings, start_sample: int = 0):
        self.settings = settings
        self._ring = AudioRing(settings.pre_roll_samples + settings.post_roll_samples, start_sample)
        self._pending: list[Detection] = []

    def _span(self, detection: Detection) -> tuple[int, int]:
        at = int(round(detection.offset_s * self.settings.sample_rate_hz))
        return at - self.settings.pre_roll_samples, at + self.settings.post_roll_samples

    def _clip(self, detection: Detection) -> DetectionClip:
        start, end = self._span(detection)
        first, audio = self._ring.read(start, end)
        return DetectionClip(detection, audio, self.settings.sample_rate_hz, first / self.settings.sample_rate_hz)

    def feed(self, chunk: np.ndarray, detections: Iterable[Detection] = ()) -> list[DetectionClip]:
        self._ring.append(np.asarray(chunk))
        ready, waiting = [], []
        for detection in [*self._pending, *detections]:
            (ready if self._span(detection)[1] <= self._ring.end else waiting).append(detection)
        self._pending = waiting
        return [self._clip(d) for d in ready]

    def finish(self) -> list[DetectionClip]:
        """End of the stream: every pending clip, with the audio there is."""
        pending, self._pending = self._pending, []
        return [self._clip(d) for d in pending]


def clip_name(detection: Detection) -> str:
    """``20261124T211405.120Z_kws12_stop_0.9412.wav``: UTC time, model, keyword, score."""
    utc = detection.time.astimezone(datetime.timezone.utc)
    stamp = utc.strftime("%Y%m%dT%H%M%S") + f".{utc.microsecond // 1000:03d}Z"
    model, keyword = (_UNSAFE.sub("-", x) or "-" for x in (detection.model, detection.keyword))
    return f"{stamp}_{model}_{keyword}_{detection.score:.4f}.wav"


class ClipWriter:
    """Action: writes each ``DetectionClip`` to the capture folder. The folder is checked when it is made."""

    accepts = DetectionClip

    def __init__(self, settings: CaptureSettings):
        self.settings = settings
        self.directory = settings.directory
        self.log_path = self.directory / LOG_NAME
        _check_writable(self.directory, self.log_path)

    def handle(self, clip: DetectionClip) -> None:
        name = clip_name(clip.detection)
        path = self.directory / name
        for n in range(1, 1000):  # two clips in the same millisecond with the same score
            if not path.exists():
                break
            path = self.directory / f"{name[:-4]}-{n}.wav"
        line = json.dumps({**clip.detection.to_dict(), "file": path.name}) + "\n"
        try:
            atomic_write(path, wav_bytes(clip.audio, clip.sample_rate_hz))
            _append_line(self.log_path, line)
        except OSError as error:  # a full disk must not stop kws; the detection itself went out already
            _LOGGER.error("could not save the audio of '%s' to %s: %s", clip.detection.keyword, path,
                          error.strerror or error)
            return
        _LOGGER.info("saved %.2f s around '%s' to %s", clip.audio.size / clip.sample_rate_hz,
                     clip.detection.keyword, path)

    def close(self) -> None:
        pass


def _append_line(path: Path, line: str) -> None:
    """Append one line with a single write (O_APPEND), then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_writable(directory: Path, log_path: Path) -> None:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"cannot save detections in {directory}: {why}; give --save-detections "
                           "(or save_detections in the config) a folder you can write to")

    if directory.exists() and not directory.is_dir():
        raise fail("it is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kws-write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
        if log_path.exists():
            os.close(os.open(log_path, os.O_WRONLY | os.O_APPEND))
    except OSError as error:
        raise fail(error.strerror or str(error)) from None
