"""The audio of ``bench_runtime.py``: seeded streams of real speech, keywords and noise, with a JSON of where
each keyword is; cached by spec.

* ``cpu``: keyword-free LibriSpeech utterances and, between them, keyword clips
  (``speech_commands_test_a``, the kws model's words, in rounds), 1 to 2 s of gap on
  either side, ``seconds`` long.
* ``live``: 0.2 s of silence, a click, then ``keywords`` keyword clips 3 to 4 s apart.

Every clip and utterance is brought to the same active speech level, with a bed of
household noise 20 dB below it. Each keyword's entry has the clip's start and end and
the start and end of its speech, as ``kws record`` finds it in a file (the clips are
1 s with silence around the word).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from bench_runtime_engines import SAMPLE_RATE_HZ, BenchError
from kws.audio_file import read_audio, wav_bytes
from kws.bundle import atomic_write
from kws.errors import KwsError
from kws.record import check_take
from training.stream_eval import negative_files

_LOGGER = logging.getLogger(__name__)

STREAM_FORMAT = 3
"""Bump when the recipe changes, so that cached streams are made again."""
SPEECH_RMS = 0.05
"""Active level of every clip and utterance (about -26 dBFS)."""
NOISE_RMS = 0.005
"""The household noise bed, 20 dB below the speech."""
CPU_GAP_S = (1.0, 2.0)
"""cpu stream: silence (noise only) before each utterance and each keyword, uniform in this range."""
HEARD_LATE_S = 1.5
"""A detection counts for an inserted keyword from its speech start to this long after its speech end."""

CLICK_S = 0.2
"""live stream: silence, then the click at this time, from which the stream is timed."""
CLICK_SAMPLES = 32  # 2 ms
CLICK_AMPLITUDE = 0.9
CLICK_THRESHOLD = 0.6
"""The first sample louder than this (full scale 1) is the click: only silence comes before it."""
LIVE_LEAD_S = 3.0
"""live stream: from the click to the first keyword."""
LIVE_SPACING_S = (3.0, 4.0)
"""live stream: between two keywords, uniform in this range (well beyond the 1 s refractory time)."""
LIVE_TAIL_S = 3.0
"""live stream: after the last keyword, so its detection and hook happen while the stream plays."""


@dataclass(frozen=True)
class DataPaths:
    """Where the real audio comes from (``../shared/DATA.md``)."""

    keyword_clips: Path
    """``speech_commands_test_a``: ``<word>/*.flac`` (evaluation data; fine for a benchmark)."""
    librispeech: Path
    """LibriSpeech with ``INDEX.csv``: utterances whose transcript holds none of the keywords."""
    noise: Path
    """Household noise recordings, mixed under everything."""

    def check(self) -> None:
        for path, option in ((self.keyword_clips, "--keyword-clips"), (self.librispeech, "--librispeech"),
                             (self.noise, "--noise")):
            if not path.is_dir():
                raise BenchError(f"{path} not found: give {option} DIR (see ../shared/DATA.md)")
        if not (self.librispeech / "INDEX.csv").is_file():
            raise BenchError(f"{self.librispeech / 'INDEX.csv'} not found: --librispeech needs the folder with it")


@dataclass(frozen=True)
class StreamSpec:
    """One stream; equal specs make equal files (the cache key)."""

    kind: str
    """``cpu`` (``seconds`` long) or ``live`` (``keywords`` keywords after a click)."""
    model: str
    """Name of the kws bundle whose keywords are inserted."""
    seed: int
    seconds: float = 0.0
    keywords: int = 0

    @property
    def stem(self) -> str:
        size = f"{self.seconds / 60:g}min" if self.kind == "cpu" else f"{self.keywords}kw"
        return f"{self.kind}-{self.model}-seed{self.seed}-{size}"


@dataclass(frozen=True)
class Stream:
    wav: Path
    spec: StreamSpec
    seconds: float
    keywords: tuple[dict, ...]
    """Each ``{"word", "clip", "start_s", "end_s", "speech_start_s", "speech_end_s"}``, in stream order."""
    click_s: float | None = None
    """live: where the click is."""


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample of the speech in ``audio``: its loudest utterance, as ``kws record`` finds
    it in a file (``check_take``: above the noise floor, short gaps bridged)."""
    found = check_take(audio, whole_file=True)
    if not found.voiced_s:
        return 0, audio.size
    half = found.voiced_s / 2
    return (max(0, int(round((found.speech_centre_s - half) * SAMPLE_RATE_HZ))),
            min(audio.size, int(round((found.speech_centre_s + half) * SAMPLE_RATE_HZ))))


def at_speech_level(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled so that its speech (``speech_span``) has RMS ``SPEECH_RMS``."""
    start, end = speech_span(audio)
    rms = float(np.sqrt(np.mean(audio[start:end].astype(np.float64) ** 2)))
    return (audio * (SPEECH_RMS / max(rms, 1e-6))).astype(np.float32)


def keyword_clips(folder: Path, words: Sequence[str]) -> dict[str, list[Path]]:
    clips = {word: sorted((folder / word).glob("*.flac")) for word in words}
    empty = [word for word, paths in clips.items() if not paths]
    if empty:
        raise BenchError(f"{folder}: no clips of {', '.join(empty)} (<word>/*.flac); give --keyword-clips DIR")
    return clips


def keyword_free_utterances(folder: Path, words: Sequence[str]) -> list[Path]:
    """The utterances of a LibriSpeech ``INDEX.csv`` folder whose transcripts hold none of ``words``."""
    try:
        return sorted(negative_files([folder], words).files)
    except KwsError as error:
        raise BenchError(str(error)) from None


def noise_bed(folder: Path, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` of household noise: the recordings in a seeded order, each at ``NOISE_RMS``, end to end."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".flac", ".wav", ".ogg"))
    if not files:
        raise BenchError(f"{folder}: no noise recordings (.flac, .wav, .ogg); give --noise DIR")
    parts, total = [], 0
    while total < samples:
        for index in rng.permutation(len(files)):
            noise = read_audio(files[index], SAMPLE_RATE_HZ)
            rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
            parts.append((noise * (NOISE_RMS / max(rms, 1e-6))).astype(np.float32))
            total += noise.size
            if total >= samples:
                break
    return np.concatenate(parts)[:samples]


class _Timeline:
    """Clips placed end to end with gaps of silence between them; the noise bed goes under it all at the end."""

    def __init__(self, clips: dict[str, list[Path]], clips_root: Path, rng: np.random.Generator):
        self.parts: list[np.ndarray] = []
        self.samples = 0
        self.keywords: list[dict] = []
        self._clips, self._root, self._rng = clips, clips_root, rng
        self._used: dict[str, int] = {}
        self._words = self._word_order(list(clips))

    def _word_order(self, words: list[str]) -> Iterator[str]:
        """Seeded rounds: every word once per round, in a new order each round."""
        while True:
            for index in self._rng.permutation(len(words)):
                yield words[index]

    def gap(self, seconds: float) -> None:
        self.add(np.zeros(int(round(seconds * SAMPLE_RATE_HZ)), np.float32))

    def add(self, audio: np.ndarray) -> float:
        start_s = self.samples / SAMPLE_RATE_HZ
        self.parts.append(audio)
        self.samples += audio.size
        return start_s

    def add_keyword(self) -> None:
        """The next word's next clip (each clip once, while there are unused ones)."""
        word = next(self._words)
        paths, used = self._clips[word], self._used.get(word, 0)
        if used % len(paths) == 0:
            self._rng.shuffle(paths)
        path = paths[used % len(paths)]
        self._used[word] = used + 1
        clip = at_speech_level(read_audio(path, SAMPLE_RATE_HZ))
        speech_start, speech_end = speech_span(clip)
        start_s = self.add(clip)
        self.keywords.append({"word": word, "clip": str(path.relative_to(self._root)), "start_s": round(start_s, 4),
                              "end_s": round(start_s + clip.size / SAMPLE_RATE_HZ, 4),
                              "speech_start_s": round(start_s + speech_start / SAMPLE_RATE_HZ, 4),
                              "speech_end_s": round(start_s + speech_end / SAMPLE_RATE_HZ, 4)})

    def audio(self) -> np.ndarray:
        return np.concatenate(self.parts)


def build_stream(spec: StreamSpec, words: Sequence[str], data: DataPaths) -> tuple[np.ndarray, dict]:
    """(float32 audio, its description) for ``spec``; the same for the same spec and data."""
    rng = np.random.default_rng(spec.seed)
    timeline = _Timeline(keyword_clips(data.keyword_clips, words), data.keyword_clips, rng)
    info: dict[str, Any] = {"format": STREAM_FORMAT, "spec": asdict(spec), "sample_rate_hz": SAMPLE_RATE_HZ}
    if spec.kind == "cpu":
        utterances = keyword_free_utterances(data.librispeech, words)
        target = int(round(spec.seconds * SAMPLE_RATE_HZ))
        count = 0
        while timeline.samples < target:
            timeline.gap(rng.uniform(*CPU_GAP_S))
            timeline.add(at_speech_level(read_audio(utterances[rng.integers(len(utterances))], SAMPLE_RATE_HZ)))
            count += 1
            timeline.gap(rng.uniform(*CPU_GAP_S))
            timeline.add_keyword()
        audio = timeline.audio()[:target]
        keywords = [k for k in timeline.keywords if k["end_s"] * SAMPLE_RATE_HZ <= target]
        audio = audio + noise_bed(data.noise, audio.size, rng)
        info["utterances"] = count
    elif spec.kind == "live":
        timeline.gap(CLICK_S)
        click = np.zeros(int(LIVE_LEAD_S * SAMPLE_RATE_HZ), np.float32)
        click[:CLICK_SAMPLES] = CLICK_AMPLITUDE
        timeline.add(click)
        for index in range(spec.keywords):
            if index:
                timeline.gap(rng.uniform(*LIVE_SPACING_S))
            timeline.add_keyword()
        timeline.gap(LIVE_TAIL_S)
        audio = timeline.audio()
        keywords = timeline.keywords
        quiet = int(CLICK_S * SAMPLE_RATE_HZ) + CLICK_SAMPLES  # nothing before the click, noise from after it
        audio[quiet:] += noise_bed(data.noise, audio.size - quiet, rng)
        info["click_s"] = CLICK_S
    else:
        raise ValueError(f"unknown stream kind {spec.kind!r}")
    info.update(seconds=audio.size / SAMPLE_RATE_HZ, keywords=keywords)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), info


def stream_for(spec: StreamSpec, words: Sequence[str], data: DataPaths, folder: Path) -> Stream:
    """The stream of ``spec``: from ``folder`` if it is there with this spec, else made and written (atomically)."""
    wav, description = folder / f"{spec.stem}.wav", folder / f"{spec.stem}.json"
    info = None
    if wav.is_file() and description.is_file():
        cached = json.loads(description.read_text())
        if cached.get("format") == STREAM_FORMAT and cached.get("spec") == asdict(spec):
            info = cached
            _LOGGER.info("reusing %s", wav)
    if info is None:
        data.check()
        _LOGGER.info("making %s", wav)
        audio, info = build_stream(spec, words, data)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(wav, wav_bytes(audio, SAMPLE_RATE_HZ))
        atomic_write(description, (json.dumps(info, indent=1) + "\n").encode())
    return Stream(wav, spec, info["seconds"], tuple(info["keywords"]), info.get("click_s"))


def match_keywords(keywords: Sequence[dict], detections: Sequence[tuple[str, float]],
                   shift_s: float = 0.0) -> tuple[dict[int, float], int]:
    """({keyword index: detection time - its speech end}, other detections).

    A detection ``(word, time)`` (``time`` on the stream's clock plus ``shift_s``) counts
    once for the first unmatched keyword of that word whose speech starts before it and
    ends at most ``HEARD_LATE_S`` before it.
    """
    found: dict[int, float] = {}
    other = 0
    for word, at in detections:
        match = next((i for i, k in enumerate(keywords) if i not in found and k["word"] == word
                      and k["speech_start_s"] + shift_s <= at <= k["speech_end_s"] + shift_s + HEARD_LATE_S), None)
        if match is None:
            other += 1
        else:
            found[match] = at - (keywords[match]["speech_end_s"] + shift_s)
    return found, other
