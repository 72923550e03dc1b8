"""Streaming evaluation of a bundle over long audio: false accepts per hour, false rejects per SNR, thresholds.

The runtime's own parts do all of it. ``StreamScorer`` runs the bundle's MFCC
front end and interpreter over a whole stream, one inference per stride at
exactly the frames where ``kws.spotter.ModelHead`` makes them; ``smooth`` runs
``kws.detector.Detector.smooth`` over the stored probabilities once per detector
setting; ``replay`` runs ``Detector.decide`` at any thresholds. A replay gives
the detections ``KeywordSpotter`` (and ``kws detect``) gives on the same audio,
and a sweep over hundreds of thresholds costs little more than one, because a
step where no keyword reaches its threshold only re-arms the detector.

Negatives: audio files, or folders searched recursively. A folder with an
``INDEX.csv`` (``path``, ``keywords_in_transcript``, ``transcript``, as in the
LibriSpeech part here) gives only the utterances whose ``keywords_in_transcript``
names no keyword of the bundle and whose transcript holds none as a word. Each file
is one stream followed by a window of silence, as ``kws detect`` feeds it; every
detection there is a false accept. A file that cannot be decoded is logged,
listed in ``skipped`` and left out: the hours count only the audio heard.

Positives: clips of one keyword, each between ``pad_s`` of background: a quiet
noise floor for ``clean``, or a stretch of the noise recordings scaled to each
SNR (the same stretch, chosen with the seed, for every SNR of a clip). The SNR
is the level of the clip's active part (20-ms frames within 20 dB of its
loudest) over the noise's. A positive is rejected when its keyword fires nowhere
in its stream; any other keyword firing there counts as a false accept on
positives (``wrong_keyword``).

Nothing here imports TensorFlow: it needs only the TFLite runtime.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import kws
from kws.audio_file import read_audio
from kws.bundle import Bundle, atomic_write, load_bundle
from kws.detector import Detection, Detector, DetectorSettings
from kws.errors import AudioError, ConfigError, KwsError
from kws.features import Mfcc
from kws.interpreter import Classifier, make_interpreter
from kws.spotter import stride_frames_for
from training.data import AUDIO_SUFFIXES
from training.mine import best_windows

_LOGGER = logging.getLogger(__name__)

CLEAN = "clean"
"""Name of the positive condition without added noise."""
DEFAULT_SNRS_DB = (20.0, 10.0, 5.0, 0.0)
DEFAULT_TARGET_FA_PER_HOUR = 0.5
DEFAULT_STRIDE_MS = 100.0
PAD_S = 1.5
QUIET_FLOOR_RMS = 0.003  # about -50 dBFS: the clean background, as in scripts/benchmark_detection.py
ACTIVE_FRAME_MS = 20.0
ACTIVE_RANGE_DB = 20.0
INDEX_NAME = "INDEX.csv"
TRANSCRIPTS_GLOB = "*.trans.txt"
THRESHOLD_DECIMALS = 4
"""Thresholds placed just above a measured peak score are rounded up to this many decimals."""


def condition_name(snr_db: float) -> str:
    return f"{snr_db:g} dB"


def highest_score(bundle: Bundle) -> float:
    """The highest probability the model can output: 255/256 for the usual int8 output, else 1."""
    q = bundle.output
    if q.dtype in ("int8", "uint8"):
        top = 127 if q.dtype == "int8" else 255
        return min(1.0, (top - q.zero_point) * q.scale)
    return 1.0


@dataclass(frozen=True)
class StreamEvalSettings:
    """How positives are built and which thresholds are tried."""

    snrs_db: tuple[float, ...] = DEFAULT_SNRS_DB
    """SNRs of the noisy positive conditions; ``clean`` is always measured too."""
    pad_s: float = PAD_S
    """Background before and after each positive clip."""
    floor_rms: float = QUIET_FLOOR_RMS
    """RMS of the Gaussian noise floor of the clean condition (digital silence never occurs in a room)."""
    seed: int = 0
    """Chooses the noise stretches and the noise floor; the same seed gives the same streams."""
    max_positives: int = 0
    """At most this many clips, evenly spread over the sorted list (0 = all)."""
    stride_ms: float = DEFAULT_STRIDE_MS
    """Audio between two inferences, as the runtime's ``--stride-ms``."""
    lowest_threshold: float = 0.1
    """The lowest threshold tried. Low for a long smoothing span: a word is whole in the window for only part
    of a wake-word bundle's 1.2 s, so its averaged score stays well below its peak."""
    threshold_step: float = 0.001
    """Step of the calibration grid (up to 0.999); the DET curve takes every tenth."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(s) for s in self.snrs_db) or len(set(self.snrs_db)) != len(self.snrs_db):
            raise ConfigError(f"SNRs {list(self.snrs_db)}: give distinct finite numbers in dB")
        if self.pad_s < 0 or self.floor_rms < 0 or self.max_positives < 0:
            raise ConfigError("pad_s, floor_rms and max_positives must not be negative")
        if not self.stride_ms > 0:
            raise ConfigError(f"stride_ms={self.stride_ms}: must be positive")
        if not 0 < self.lowest_threshold < 1 or not 0 < self.threshold_step < 0.1:
            raise ConfigError("lowest_threshold must be in (0, 1) and threshold_step in (0, 0.1)")

    @property
    def conditions(self) -> tuple[str, ...]:
        return (CLEAN,) + tuple(condition_name(s) for s in self.snrs_db)

    def grid(self, step: float | None = None, lowest: float | None = None) -> np.ndarray:
        """Thresholds from ``lowest`` (default ``lowest_threshold``) to 0.999 by ``step`` (default ``threshold_step``)."""
        step = step or self.threshold_step
        lowest = self.lowest_threshold if lowest is None else lowest
        count = int(math.floor((0.999 - lowest) / step + 1e-9)) + 1
        return np.round(lowest + step * np.arange(count), 6)

    def det_grid(self) -> np.ndarray:
        """The DET curve's thresholds: every tenth of the grid, and the whole grid above 0.99 (where wake words live)."""
        coarse = self.grid(10 * self.threshold_step)
        return np.unique(np.concatenate([coarse, self.grid(lowest=max(0.99, self.lowest_threshold))]))


# --- scoring ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScoredStream:
    """The class probabilities of every inference in one stream, as the runtime computes them."""

    name: str
    probabilities: np.ndarray
    """``(inferences, labels)`` float32, as ``Classifier.predict`` returns them."""
    times_s: np.ndarray
    """Stream position of each inference (end of its window), as ``Detection.offset_s``."""
    duration_s: float
    """Audio in the stream, without the silence fed after it."""


class StreamScorer:
    """The bundle's front end and classifier over a whole stream: one inference per stride, as ``ModelHead``."""

    def __init__(self, bundle: Bundle, stride_ms: float = DEFAULT_STRIDE_MS, num_threads: int = 1):
        self.bundle = bundle
        self.stride_ms = stride_ms
        self.stride_frames = stride_frames_for(bundle.features, stride_ms)
        self.mfcc = Mfcc(bundle.features)
        self.classifier = Classifier(make_interpreter(bundle.model_content, num_threads))

    @property
    def sample_rate_hz(self) -> int:
        return self.bundle.features.sample_rate_hz

    @property
    def flush_samples(self) -> int:
        """The silence ``kws detect`` feeds after a file, so that its end fills a window."""
        return int(self.bundle.window_s * self.sample_rate_hz)

    def score(self, audio: np.ndarray, name: str = "", flush: bool = False) -> ScoredStream:
        """Probabilities at every stride once the first window is full; ``flush`` appends the silence of ``kws detect``."""
        audio = np.asarray(audio, np.float32)
        duration_s = audio.size / self.sample_rate_hz
        if flush:
            audio = np.concatenate([audio, np.zeros(self.flush_samples, np.float32)])
        features = self.mfcc.compute(audio)
        window = self.bundle.window_frames
        ends = range(window, len(features) + 1, self.stride_frames)
        if len(ends):
            probabilities = np.stack([self.classifier.predict(features[e - window : e]) for e in ends])
        else:
            probabilities = np.zeros((0, len(self.bundle.labels)), np.float32)
        f = self.bundle.features
        times = np.array([f.samples_for(e) / f.sample_rate_hz for e in ends], np.float64)
        return ScoredStream(name, probabilities, times, duration_s)


# --- replaying the detector ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SmoothedStream:
    """A scored stream smoothed for one stride and smoothing span; ``replay`` it at any thresholds."""

    stream: ScoredStream
    scores: np.ndarray
    """Smoothed scores of every label, as ``Detector.smooth`` returns them."""
    peak: np.ndarray
    """The highest smoothed keyword score of each inference."""
    smoothing_steps: int

    @property
    def top(self) -> float:
        """The highest smoothed keyword score in the stream (-1 when it has no inference)."""
        return float(self.peak.max()) if self.peak.size else -1.0


def keyword_columns(bundle: Bundle) -> list[int]:
    """Columns of the labels that can fire, in the order of ``bundle.keywords``."""
    return [bundle.labels.index(keyword) for keyword in bundle.keywords]


def smooth(stream: ScoredStream, bundle: Bundle, settings: DetectorSettings) -> SmoothedStream:
    smoother = Detector(bundle.labels, settings, bundle.name)
    if len(stream.probabilities):
        scores = np.stack([smoother.smooth(p) for p in stream.probabilities])
    else:
        scores = np.zeros((0, len(bundle.labels)), np.float32)
    peak = scores[:, keyword_columns(bundle)].max(axis=1) if len(scores) else np.zeros(0, np.float32)
    return SmoothedStream(stream, scores, peak, settings.smoothing_steps())


def replay(smoothed: SmoothedStream, bundle: Bundle, settings: DetectorSettings) -> list[Detection]:
    """The detections ``Detector.process`` makes over the stream at ``settings``.

    Only the inferences where some keyword reaches the lowest threshold, and the
    one after each run of them (which re-arms every keyword), are decided: the
    others cannot change what fires (see ``Detector.decide``).
    """
    if settings.smoothing_steps() != smoothed.smoothing_steps:
        raise ValueError(f"scores smoothed over {smoothed.smoothing_steps} inferences, settings want "
                         f"{settings.smoothing_steps()}: smooth again")
    detector = Detector(bundle.labels, settings, bundle.name)
    fire = [k for k in bundle.keywords if settings.keywords is None or k in settings.keywords]
    if not fire or smoothed.top < 0:
        return []
    lowest = np.float32(min(settings.thresholds[k] for k in fire))  # as the detector compares, in float32
    active = np.flatnonzero(smoothed.peak >= lowest)
    after = active + 1
    steps = np.union1d(active, after[after < len(smoothed.peak)])
    times = smoothed.stream.times_s
    detections = []
    for i in steps:
        detection = detector.decide(smoothed.scores[i], float(times[i]))
        if detection is not None:
            detections.append(detection)
    return detections


# --- negatives -------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Upper-case words of a transcript; ``YES'M`` and ``GO'S`` count as ``YES`` and ``GO``."""
    return [w.split("'")[0] for w in re.findall(r"[A-Z0-9']+", text.upper()) if w.split("'")[0]]


def mentions(transcript: str, keyword: str) -> bool:
    """Whether ``transcript`` holds ``keyword`` as a word (``hey_jarvis``: the words ``HEY JARVIS`` in a row)."""
    phrase = [w for w in re.split(r"[_\-\s]+", keyword.upper()) if w]
    words = _words(transcript)
    return bool(phrase) and any(words[i : i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))


def _says_a_keyword(transcript: str, keywords: Sequence[str]) -> bool:
    return any(mentions(transcript, k) for k in keywords)


def _audio_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _transcribed(folder: Path, files: list[Path], keywords: Sequence[str]) -> tuple[list[Path], int]:
    """``files`` of ``folder`` less those whose LibriSpeech transcript holds a keyword; how many were left out.

    LibriSpeech as released keeps a ``SPEAKER-CHAPTER.trans.txt`` beside each chapter's audio, one
    ``UTTERANCE-ID TRANSCRIPT`` per line for ``UTTERANCE-ID.flac``. A file no transcript names is kept.
    """
    transcripts: dict[Path, str] = {}
    for listing in sorted(folder.rglob(TRANSCRIPTS_GLOB)):
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise KwsError(f"transcript {listing} cannot be read ({error}): fix or remove it") from None
        for line in lines:
            utterance, _, transcript = line.strip().partition(" ")
            if utterance:
                transcripts[listing.parent / utterance] = transcript
    kept = [f for f in files if not _says_a_keyword(transcripts.get(f.with_suffix(""), ""), keywords)]
    return kept, len(files) - len(kept)


def _indexed(folder: Path, keywords: Sequence[str]) -> tuple[list[Path], int]:
    """Files of an ``INDEX.csv`` folder whose transcripts hold none of ``keywords``; and how many were left out.

    The index's ``keywords_in_transcript`` names the keywords of the default model each
    transcript holds (``on up``); only the ones among ``keywords`` count, so a custom word's
    negatives keep the utterances that merely say "on" or "up".
    """
    wanted = {k.lower() for k in keywords}
    index = folder / INDEX_NAME
    try:
        with index.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise KwsError(f"{index} cannot be read ({error})") from None
    if rows and "path" not in rows[0]:
        raise KwsError(f"{index} has no 'path' column: give the audio files instead, or fix the index")
    files, excluded = [], 0
    for row in rows:
        listed = set((row.get("keywords_in_transcript") or "").lower().split())
        transcript = row.get("transcript") or ""
        if listed & wanted or _says_a_keyword(transcript, keywords):
            excluded += 1
            continue
        files.append(folder / row["path"])
    return files, excluded


@dataclass(frozen=True)
class NegativeFiles:
    files: tuple[Path, ...]
    sources: tuple[str, ...]
    """The paths as given."""
    excluded: int
    """Utterances left out because their transcripts (``INDEX.csv``, ``*.trans.txt``) hold a keyword."""


def negative_files(paths: Sequence[Path], keywords: Sequence[str]) -> NegativeFiles:
    """The audio files of ``paths`` (files, folders, ``INDEX.csv`` folders); a missing path is an error.

    Utterances whose transcript holds a keyword are left out: those an ``INDEX.csv`` names so, and in
    other folders those a LibriSpeech ``*.trans.txt`` beside them does.
    """
    files, excluded, notes = [], 0, []
    for path in paths:
        path = Path(path)
        if path.is_file():
            files.append(path)
        elif path.is_dir() and (path / INDEX_NAME).is_file():
            chosen, left_out = _indexed(path, keywords)
            notes.append(f"{path}: {len(chosen)} utterances without a keyword in their transcript ({left_out} left out)")
            files += chosen
            excluded += left_out
        elif path.is_dir():
            found = _audio_in(path)
            if not found:
                raise KwsError(f"negatives folder {path} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            chosen, left_out = _transcribed(path, found, keywords)
            if left_out:
                notes.append(f"{path}: {len(chosen)} files without a keyword in their {TRANSCRIPTS_GLOB} transcript "
                             f"({left_out} left out)")
            files += chosen
            excluded += left_out
        else:
            raise KwsError(f"negatives {path} not found: give audio files or folders of them")
    if not files:
        raise KwsError("no negative audio: the transcript of every utterance given mentions a keyword")
    for note in notes:
        _LOGGER.info("%s", note)
    return NegativeFiles(tuple(files), tuple(str(p) for p in paths), excluded)


@dataclass(frozen=True, eq=False)
class Negatives:
    """Scored negative streams: every detection in them is a false accept."""

    streams: tuple[ScoredStream, ...]
    sources: tuple[str, ...]
    excluded: int
    skipped: tuple[str, ...]
    """``path: reason`` of each file that could not be read."""

    @property
    def hours(self) -> float:
        return sum(s.duration_s for s in self.streams) / 3600

    def to_dict(self) -> dict:
        return {"sources": list(self.sources), "files": len(self.streams), "hours": round(self.hours, 4),
                "excluded_by_transcript": self.excluded, "skipped": list(self.skipped)}


def score_negatives(scorer: StreamScorer, listing: NegativeFiles) -> Negatives:
    """Each file one stream with the silence of ``kws detect`` after it; unreadable files are skipped and listed."""
    streams, skipped = [], []
    for path in listing.files:
        try:
            audio = read_audio(path, scorer.sample_rate_hz)
        except AudioError as error:
            skipped.append(f"{path}: {error}")
            continue
        streams.append(scorer.score(audio, str(path), flush=True))
    if not streams:
        raise KwsError(f"none of the {len(listing.files)} negative audio file(s) could be read (first: {skipped[0]})")
    for line in skipped:  # logged once it is clear that the run goes on
        _LOGGER.warning("skipped negative: %s", line)
    return Negatives(tuple(streams), listing.sources, listing.excluded, tuple(skipped))


# --- positives -------------------------------------------------------------------------------------------


def positive_clips(folder: Path, max_clips: int = 0) -> list[Path]:
    """The audio files in ``folder`` (recursively), sorted; at most ``max_clips`` spread evenly (0 = all)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KwsError(f"positives folder {folder} not found: give a folder of clips of the keyword")
    clips = _audio_in(folder)
    if not clips:
        raise KwsError(f"positives folder {folder} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    if max_clips and len(clips) > max_clips:
        clips = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, max_clips).round()]
    return clips


def positive_keyword(bundle: Bundle, folder: Path, keyword: str | None = None) -> str:
    """The keyword the positives say: ``keyword``, else the folder's name if a keyword, else the only keyword."""
    if keyword is not None:
        if keyword not in bundle.keywords:
            raise KwsError(f"keyword {keyword!r} is not in {bundle.name}; it knows {', '.join(bundle.keywords)}")
        return keyword
    if Path(folder).name in bundle.keywords:
        return Path(folder).name
    if len(bundle.keywords) == 1:
        return bundle.keywords[0]
    raise KwsError(f"which keyword do the clips in {folder} say? {bundle.name} knows {', '.join(bundle.keywords)}: "
                   "pass --keyword, or name the folder after the keyword")


@dataclass(frozen=True, eq=False)
class Noise:
    recordings: tuple[np.ndarray, ...]
    sources: tuple[str, ...]
    skipped: tuple[str, ...]


def load_noise(folders: Sequence[Path], sample_rate_hz: int) -> Noise:
    """Every readable audio file of ``folders`` (files may be given too); unreadable ones are skipped and listed."""
    recordings, skipped = [], []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise KwsError(f"noise folder {folder} not found")
        files = [folder] if folder.is_file() else _audio_in(folder)
        if not files:
            raise KwsError(f"noise folder {folder} holds no audio files")
        for path in files:
            try:
                audio = read_audio(path, sample_rate_hz)
            except AudioError as error:
                skipped.append(f"{path}: {error}")
                continue
            if audio.size and np.any(audio):
                recordings.append(audio)
    if not recordings:
        raise KwsError(f"no usable noise recording in {', '.join(str(f) for f in folders)}")
    for line in skipped:
        _LOGGER.warning("skipped noise: %s", line)
    return Noise(tuple(recordings), tuple(str(f) for f in folders), tuple(skipped))


def _active_power(rows: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mean power of each row's active part: its 20-ms frames within 20 dB of its loudest (a row shorter
    than a frame: all of it; an empty row: 0)."""
    size = max(1, int(sample_rate_hz * ACTIVE_FRAME_MS / 1000))
    count = rows.shape[1] // size
    if count == 0:
        return np.mean(np.square(rows, dtype=np.float64), axis=1) if rows.shape[1] else np.zeros(len(rows))
    power = np.mean(np.square(rows[:, : count * size].reshape(len(rows), count, size), dtype=np.float64), axis=2)
    active = power >= power.max(axis=1, keepdims=True) * 10 ** (-ACTIVE_RANGE_DB / 10)
    return np.sum(power * active, axis=1) / np.sum(active, axis=1)


def speech_rms(clip: np.ndarray, sample_rate_hz: int) -> float:
    """RMS of the clip's active part: its 20-ms frames within 20 dB of the loudest."""
    return float(np.sqrt(_active_power(clip[None], sample_rate_hz)[0]))


def speech_levels_dbfs(rows: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """``speech_rms`` of each row of float audio (full scale 1.0), in dBFS; a silent row is -inf."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(_active_power(rows, sample_rate_hz))


def noise_stretch(noise: Noise, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` of one recording from a random place (a short recording is repeated)."""
    recording = noise.recordings[int(rng.integers(len(noise.recordings)))]
    start = int(rng.integers(recording.size))
    return np.resize(np.roll(recording, -start), samples).astype(np.float32)


def embed(clip: np.ndarray, pad_samples: int, rng: np.random.Generator | None = None, floor_rms: float = QUIET_FLOOR_RMS,
          noise: np.ndarray | None = None, snr_db: float | None = None, sample_rate_hz: int = 16000) -> np.ndarray:
    """``clip`` between ``pad_samples`` of background: ``noise`` scaled to ``snr_db``, else a quiet floor from ``rng``.

    A mix whose peak passes full scale is scaled down as a whole (the SNR stays).
    """
    pad = np.zeros(pad_samples, np.float32)
    stream = np.concatenate([pad, np.asarray(clip, np.float32), pad])
    if noise is None or snr_db is None:
        stream += (floor_rms * rng.standard_normal(stream.size)).astype(np.float32)
        return stream
    noise_rms = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64))))
    gain = speech_rms(clip, sample_rate_hz) / (noise_rms * 10 ** (snr_db / 20)) if noise_rms > 0 else 0.0
    stream = stream + (gain * noise[: stream.size]).astype(np.float32)
    peak = float(np.max(np.abs(stream)))
    return stream / np.float32(peak) if peak > 1 else stream


@dataclass(frozen=True, eq=False)
class Positives:
    """Scored positive streams per condition (``clean``, ``20 dB``, ...), one per clip in each."""

    keyword: str
    source: str
    streams: Mapping[str, tuple[ScoredStream, ...]]
    skipped: tuple[str, ...]
    noise: tuple[str, ...]

    @property
    def clips(self) -> int:
        return len(next(iter(self.streams.values()), ()))

    def to_dict(self) -> dict:
        return {"source": self.source, "keyword": self.keyword, "clips": self.clips,
                "conditions": list(self.streams), "noise": list(self.noise), "skipped": list(self.skipped)}


def score_positives(scorer: StreamScorer, clips: Sequence[Path], keyword: str, settings: StreamEvalSettings,
                    noise: Noise | None, source: str = "") -> Positives:
    """Each clip embedded in every condition and scored; unreadable clips are skipped and listed."""
    if settings.snrs_db and noise is None:
        raise KwsError("the SNR conditions need background noise: pass --noise DIR (e.g. household recordings), "
                       "or no --snr values for the clean condition only")
    rate = scorer.sample_rate_hz
    pad = int(round(settings.pad_s * rate))
    streams: dict[str, list[ScoredStream]] = {c: [] for c in settings.conditions}
    skipped = []
    for i, path in enumerate(clips):
        try:
            clip = read_audio(path, rate)
        except AudioError as error:
            skipped.append(f"{path}: {error}")
            continue
        rng = np.random.default_rng([settings.seed, i])
        stretch = noise_stretch(noise, clip.size + 2 * pad, rng) if settings.snrs_db else None
        streams[CLEAN].append(scorer.score(embed(clip, pad, rng, settings.floor_rms), str(path)))
        for snr in settings.snrs_db:
            mixed = embed(clip, pad, noise=stretch, snr_db=snr, sample_rate_hz=rate)
            streams[condition_name(snr)].append(scorer.score(mixed, str(path)))
    if not streams[CLEAN]:
        raise KwsError(f"none of the {len(clips)} positive clip(s) could be read (first: {skipped[0]})")
    for line in skipped:
        _LOGGER.warning("skipped positive: %s", line)
    return Positives(keyword, source, {c: tuple(s) for c, s in streams.items()}, tuple(skipped),
                     noise.sources if noise is not None and settings.snrs_db else ())


# --- figures ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """What the detector does at one set of thresholds."""

    thresholds: Mapping[str, float]
    false_accepts: int | None
    """Detections in the negatives (None without negatives)."""
    fa_per_hour: float | None
    frr: Mapping[str, float]
    """Per positive condition: the share of clips whose keyword did not fire."""
    wrong_keyword: Mapping[str, int]
    """Per positive condition: detections of another keyword (false accepts on positives)."""
    missed: Mapping[str, tuple[str, ...]]
    """Per positive condition: the clips (stream names) whose keyword did not fire, behind ``frr``; not in
    ``to_dict``, which every point of a DET curve writes."""

    @property
    def threshold(self) -> float | None:
        """The threshold when every keyword has the same one."""
        values = set(self.thresholds.values())
        return values.pop() if len(values) == 1 else None

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "thresholds": dict(self.thresholds),
                "false_accepts": self.false_accepts,
                "fa_per_hour": None if self.fa_per_hour is None else round(self.fa_per_hour, 4),
                "frr": {k: round(v, 4) for k, v in self.frr.items()}, "wrong_keyword": dict(self.wrong_keyword)}


class Replayer:
    """Scored negatives and positives smoothed for one detector setting: figures at any thresholds."""

    def __init__(self, bundle: Bundle, settings: DetectorSettings, negatives: Negatives | None = None,
                 positives: Positives | None = None):
        self.bundle = bundle
        self.settings = settings
        self.negatives = negatives
        self.positives = positives
        self._negatives = [smooth(s, bundle, settings) for s in negatives.streams] if negatives else []
        self._negative_tops = np.array([s.top for s in self._negatives], np.float32)
        self._positives = {c: [smooth(s, bundle, settings) for s in streams]
                           for c, streams in (positives.streams.items() if positives else ())}

    @property
    def hours(self) -> float:
        return self.negatives.hours if self.negatives else 0.0

    @property
    def highest_threshold(self) -> float:
        """The highest threshold worth trying: above the model's highest output, nothing can fire."""
        scale = 10 ** THRESHOLD_DECIMALS
        return math.floor(highest_score(self.bundle) * scale + 1e-6) / scale

    def usable(self, thresholds: Sequence[float]) -> np.ndarray:
        """``thresholds`` up to ``highest_threshold``."""
        thresholds = np.asarray(thresholds, float)
        return thresholds[thresholds <= self.highest_threshold]

    def at(self, threshold: float) -> DetectorSettings:
        """The settings with one threshold for every keyword."""
        return dataclasses.replace(self.settings, thresholds={k: float(threshold) for k in self.bundle.keywords})

    def _lowest(self, settings: DetectorSettings) -> np.float32:
        fire = [k for k in self.bundle.keywords if settings.keywords is None or k in settings.keywords]
        return np.float32(min((settings.thresholds[k] for k in fire), default=2.0))

    def false_accepts(self, settings: DetectorSettings) -> int:
        reachable = np.flatnonzero(self._negative_tops >= self._lowest(settings))
        return sum(len(replay(self._negatives[i], self.bundle, settings)) for i in reachable)

    def point(self, settings: DetectorSettings) -> OperatingPoint:
        false_accepts = self.false_accepts(settings) if self.negatives else None
        frr, wrong, missed = {}, {}, {}
        if self.positives:
            lowest = self._lowest(settings)
            for condition, streams in self._positives.items():
                missing, wrong_count = [], 0
                for stream in streams:
                    fired = [d.keyword for d in replay(stream, self.bundle, settings)] if stream.top >= lowest else []
                    if self.positives.keyword not in fired:
                        missing.append(stream.stream.name)
                    wrong_count += sum(k != self.positives.keyword for k in fired)
                frr[condition] = len(missing) / max(len(streams), 1)
                wrong[condition] = wrong_count
                missed[condition] = tuple(missing)
        return OperatingPoint(dict(settings.thresholds), false_accepts,
                              None if false_accepts is None else false_accepts / self.hours, frr, wrong, missed)

    def sweep(self, thresholds: Sequence[float]) -> list[OperatingPoint]:
        return [self.point(self.at(t)) for t in thresholds]

    def highest_negatives(self, count: int = 5) -> list[NegativeMoment]:
        """The ``count`` moments of the negatives where a keyword scored highest, highest first.

        Within a file, moments are at least one window plus the smoothing span apart
        (the audio one score saw), so a word that holds the score up for several
        inferences counts once. With few false accepts allowed, the threshold sits
        just above the first of them: listening to them tells what the model takes
        for its keyword.
        """
        columns = keyword_columns(self.bundle)
        span_s = self.bundle.window_s + self.settings.smoothing_s
        features = self.bundle.features
        stride_s = stride_frames_for(features, self.settings.stride_ms) * features.hop_samples / features.sample_rate_hz
        apart = math.ceil(span_s / stride_s - 1e-9)  # inferences
        found = []
        for smoothed in self._negatives:
            times = smoothed.stream.times_s
            picked = best_windows(smoothed.peak, count, 0.0, apart) if smoothed.peak.size else []
            for i in picked:
                label = self.bundle.labels[columns[int(np.argmax(smoothed.scores[i, columns]))]]
                end_s = min(float(times[i]), smoothed.stream.duration_s)  # not into the silence after the file
                start_s = min(max(0.0, float(times[i]) - span_s), end_s)
                found.append(NegativeMoment(smoothed.stream.name, start_s, end_s, label, float(smoothed.peak[i])))
        return sorted(found, key=lambda m: -m.score)[:count]

    def candidate_thresholds(self, grid: np.ndarray) -> np.ndarray:
        """``grid`` plus, for every distinct peak score of the negatives in its range, the threshold just above it.

        The false accepts change only where a threshold passes a peak score, so these
        resolve them exactly (scores of an int8 model take few distinct values). Nothing
        above ``highest_threshold``: a threshold no score can reach is no answer.
        """
        peaks = np.unique(np.concatenate([s.peak for s in self._negatives] or [np.zeros(0, np.float32)]))
        peaks = peaks[(peaks >= grid.min()) & (peaks < 1.0)]
        scale = 10 ** THRESHOLD_DECIMALS
        above = np.ceil(peaks.astype(np.float64) * scale) / scale
        above = np.where(np.float32(above) > peaks, above, above + 1 / scale)
        return self.usable(np.unique(np.round(np.concatenate([grid, above[above <= 1.0]]), THRESHOLD_DECIMALS)))


@dataclass(frozen=True)
class NegativeMoment:
    """A stretch of negative audio where a keyword's smoothed score peaked: what a threshold must sit above."""

    name: str
    start_s: float
    end_s: float
    """The audio that score averaged over: ``end_s`` is the end of the last window (``Detection.offset_s``)."""
    keyword: str
    score: float

    @property
    def shown_score(self) -> float:
        """``score`` cut to the thresholds' decimals (not rounded: a score below a threshold never shows as it)."""
        scale = 10 ** THRESHOLD_DECIMALS
        return math.floor(self.score * scale) / scale

    def describe(self) -> str:
        return f"{self.shown_score:.4f} '{self.keyword}' in {self.name} at {self.start_s:.1f}-{self.end_s:.1f} s"

    def to_dict(self) -> dict:
        return {"file": self.name, "start_s": round(self.start_s, 2), "end_s": round(self.end_s, 2),
                "keyword": self.keyword, "score": self.shown_score}


@dataclass(frozen=True)
class RateThreshold:
    """The threshold chosen for a target rate of false accepts, and what was measured there."""

    threshold: float
    false_accepts: int
    fa_per_hour: float
    negative_hours: float
    target_fa_per_hour: float
    target_met: bool
    """False: even the highest threshold tried gives more; ``threshold`` is then that highest (the best achievable).

    The highest tried is at most ``Replayer.highest_threshold``: a threshold above every
    score the model can output would meet any target by never firing at all."""
    thresholds_tried: int

    @property
    def one_false_accept_per_hour(self) -> float:
        """The resolution: what a single false accept in the negatives amounts to."""
        return 1 / self.negative_hours if self.negative_hours else math.inf

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "target_fa_per_hour": self.target_fa_per_hour,
                "fa_per_hour": round(self.fa_per_hour, 4), "false_accepts": self.false_accepts,
                "negative_hours": round(self.negative_hours, 4), "target_met": self.target_met,
                "one_false_accept_per_hour": round(self.one_false_accept_per_hour, 4),
                "thresholds_tried": self.thresholds_tried}


def threshold_for_rate(replayer: Replayer, target_fa_per_hour: float = DEFAULT_TARGET_FA_PER_HOUR,
                       thresholds: Sequence[float] | None = None) -> RateThreshold:
    """The lowest threshold (one for every keyword) at which the negatives give at most the target rate.

    Thresholds are tried from the highest down, and the answer is the lowest one
    from which every higher threshold tried also meets the target (false accepts
    fall with the threshold almost always; re-arming can make exceptions). With
    H hours of negatives one false accept is 1/H per hour, so a target below that
    means no false accept at all. ``thresholds`` default: the candidates of
    ``Replayer.candidate_thresholds`` on a 0.1..0.999 grid by 0.001; any above
    ``Replayer.highest_threshold`` are dropped.
    """
    if not replayer.negatives or replayer.hours <= 0:
        raise KwsError("calibration needs negative audio (--negatives)")
    if not target_fa_per_hour >= 0:
        raise KwsError(f"target of {target_fa_per_hour} false accepts per hour: must not be negative")
    if thresholds is None:
        thresholds = replayer.candidate_thresholds(StreamEvalSettings().grid())
    ordered = sorted({float(t) for t in replayer.usable(thresholds)}, reverse=True)
    if not ordered:
        raise ValueError(f"no thresholds to try up to {replayer.highest_threshold}")
    allowed = target_fa_per_hour * replayer.hours * (1 + 1e-9)
    chosen, tried = None, 0
    for threshold in ordered:
        false_accepts = replayer.false_accepts(replayer.at(threshold))
        tried += 1
        if false_accepts > allowed:
            if chosen is None:  # even the highest: report it as the best achievable
                chosen = (threshold, false_accepts, False)
            break
        chosen = (threshold, false_accepts, True)
    threshold, false_accepts, met = chosen
    return RateThreshold(threshold, false_accepts, false_accepts / replayer.hours, replayer.hours,
                         target_fa_per_hour, met, tried)


# --- reports ---------------------------------------------------------------------------------------------


def describe_detector(settings: DetectorSettings) -> str:
    return (f"stride {settings.stride_ms:g} ms, smoothing {settings.smoothing_s:g} s, "
            f"refractory {settings.refractory_s:g} s")


def table(rows: Sequence[tuple[str, OperatingPoint]], conditions: Sequence[str]) -> str:
    """Operating points as a text table: FA/h and false accepts on the negatives, FRR per condition."""
    width = max([len("thresholds")] + [len(label) for label, _ in rows])
    head = f"{'thresholds':<{width}} {'FA/h':>8} {'FA':>5}" + "".join(f" {'FRR ' + c:>10}" for c in conditions)
    if conditions:
        head += f" {'wrong kw':>8}"
    lines = [head]
    for label, point in rows:
        fa_h = "-" if point.fa_per_hour is None else f"{point.fa_per_hour:.2f}"
        fa = "-" if point.false_accepts is None else str(point.false_accepts)
        line = f"{label:<{width}} {fa_h:>8} {fa:>5}" + "".join(f" {point.frr[c]:>10.3f}" for c in conditions)
        if conditions:
            line += f" {sum(point.wrong_keyword.values()):>8d}"
        lines.append(line)
    return "\n".join(lines)


def describe_highest(highest: Sequence[NegativeMoment], threshold: float | None) -> list[str]:
    """Lines about the negatives' highest moments: the first says how they relate to ``threshold``."""
    if not highest:
        return []
    # compared in float32, as the detector compares
    above = sum(np.float32(m.score) >= np.float32(threshold) for m in highest) if threshold is not None else 0
    where = (f"; {above} of them reach the threshold {threshold:g} (false accepts)" if above
             else f", all below the threshold {threshold:g}" if threshold is not None else "")
    return ([f"highest-scoring moments of the negatives{where}; listen to them to hear what the model "
             f"takes for its keyword:"] + [f"  {moment.describe()}" for moment in highest])


def threshold_label(point: OperatingPoint, what: str) -> str:
    if point.threshold is not None:
        return f"{point.threshold:g} ({what})"
    return f"{what}: {min(point.thresholds.values()):g}-{max(point.thresholds.values()):g}"


def save_det(replayer: Replayer, sweep: Sequence[OperatingPoint], marks: Mapping[str, OperatingPoint],
             title: str, path: Path, target_fa_per_hour: float | None = None) -> None:
    from training.plots import plot_det

    conditions = list(replayer.positives.streams) if replayer.positives else []
    curves = {c: ([p.fa_per_hour for p in sweep], [p.frr[c] for p in sweep]) for c in conditions}
    plot_det(curves, [p.threshold for p in sweep], replayer.hours, title, path,
             marks={name: ([p.fa_per_hour] * len(conditions), [p.frr[c] for c in conditions])
                    for name, p in marks.items()},
             target_fa_per_hour=target_fa_per_hour)


def write_calibration(bundle: Bundle, rate: RateThreshold, settings: DetectorSettings, negatives: Negatives,
                      positives: Positives | None = None, at_threshold: OperatingPoint | None = None,
                      highest: Sequence[NegativeMoment] = ()) -> dict:
    """Put the threshold into the bundle's manifest for every keyword, with ``settings.smoothing_s`` (which the
    threshold was chosen for) and a ``calibration`` record (with ``highest``, the negative moments that scored
    highest); atomic.

    The ``.tflite`` is untouched. The manifest is read again as JSON (other fields
    and their order stay), written to a temporary file and renamed over the old one,
    then loaded back to check it.
    """
    manifest = json.loads(bundle.json_path.read_text(encoding="utf-8"))
    previous = dict(manifest["detector"].get("thresholds", {}))
    previous_smoothing_s = manifest["detector"].get("smoothing_s")
    manifest["detector"]["thresholds"] = {k: rate.threshold for k in bundle.keywords}
    manifest["detector"]["smoothing_s"] = settings.smoothing_s  # the threshold holds for this span only
    calibration = {
        "threshold": rate.threshold,
        "target_fa_per_hour": rate.target_fa_per_hour,
        "fa_per_hour": round(rate.fa_per_hour, 4),
        "false_accepts": rate.false_accepts,
        "negative_hours": round(rate.negative_hours, 4),
        "negative_sources": list(negatives.sources),
        "negative_files": len(negatives.streams),
        "negatives_skipped": len(negatives.skipped),
        "detector": {"stride_ms": settings.stride_ms, "smoothing_s": settings.smoothing_s,
                     "refractory_s": settings.refractory_s},
        "highest_negatives": [moment.to_dict() for moment in highest],
        "previous_thresholds": previous,
        "previous_smoothing_s": previous_smoothing_s,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kws_version": kws.__version__,
    }
    if positives is not None and at_threshold is not None:
        calibration["frr"] = {k: round(v, 4) for k, v in at_threshold.frr.items()}
        calibration["positives"] = {"source": positives.source, "keyword": positives.keyword,
                                    "clips": positives.clips, "noise": list(positives.noise)}
    manifest["calibration"] = calibration
    try:
        atomic_write(bundle.json_path, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as error:
        raise KwsError(f"cannot write {bundle.json_path} ({error.strerror}): copy the bundle (.json and .tflite) "
                       "to a folder you can write and calibrate the copy") from None
    load_bundle(bundle.json_path)
    return calibration
