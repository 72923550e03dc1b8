"""Teacher-guided mining of real keyword clips from long utterances with transcripts.

LibriSpeech utterances whose transcripts contain a scarce keyword (``on``,
``off``) hold real recordings of it, but not where. A teacher scores every
one-second window; for each time the word occurs in the transcript, the
best-scoring window (above ``min_probability``, at least ``separation_s`` from
the others) becomes a training clip in ``<out_dir>/<word>/``. The folder has
the ``<word>/*`` layout that ``kws-train train --extra`` takes.

The index is a CSV with ``path`` and ``transcript`` columns (the layout of ``../shared/data/librispeech_dev_clean_part/INDEX.csv``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio_file import read_audio
from training import data

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class MineSettings:
    """Where to look, for which words, and how sure the teacher must be."""

    corpus: Path
    """Folder with ``INDEX.csv`` and the audio it names."""
    out_dir: Path
    """Mined clips go to ``out_dir/<word>/<utterance>_<offset_ms>.wav``."""
    words: tuple[str, ...] = ("on", "off")
    min_probability: float = 0.3
    """A window is kept only if the teacher gives the word at least this. The window is already the
    best of its utterance, which the transcript says holds the word, so the bar can be low."""
    stride_ms: float = 50.0
    """Step between scored windows."""
    separation_s: float = 0.6
    """Two clips of one utterance are at least this far apart."""
    clip_s: float = 1.0

    def __post_init__(self) -> None:
        unknown = [w for w in self.words if w not in data.KEYWORDS]
        if unknown:
            raise ValueError(f"can only mine keywords of the 12-class task, not {', '.join(unknown)}")


@dataclass
class Mined:
    paths: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    """(file, word, utterance, offset_s, probability) per clip."""


def occurrences(transcript: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", transcript, flags=re.IGNORECASE))


def best_windows(scores: np.ndarray, count: int, min_probability: float, separation: int) -> list[int]:
    """Up to ``count`` window indices, best first, above the bar and ``separation`` apart."""
    scores = scores.astype(np.float64).copy()
    chosen = []
    for _ in range(count):
        best = int(np.argmax(scores))
        if scores[best] < min_probability:
            break
        chosen.append(best)
        scores[max(0, best - separation + 1) : best + separation] = -np.inf
    return chosen


def mine(settings: MineSettings, teacher) -> Mined:
    """Mine clips with ``teacher`` (anything with ``predict(audio (n, 16000)) -> (n, 12)``)."""
    from kws.audio_file import wav_bytes
    from kws.bundle import atomic_write

    rate = data.SAMPLE_RATE_HZ
    clip = int(settings.clip_s * rate)
    stride = int(settings.stride_ms * rate / 1000)
    separation = max(1, int(settings.separation_s * 1000 / settings.stride_ms))
    index = Path(settings.corpus) / "INDEX.csv"
    if not index.is_file():
        raise data.DataError(f"{index} not found: mining needs an INDEX.csv with path and transcript columns")
    result = Mined()
    with index.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        wanted = {w: occurrences(row["transcript"], w) for w in settings.words}
        wanted = {w: n for w, n in wanted.items() if n}
        if not wanted:
            continue
        audio = read_audio(Path(settings.corpus) / row["path"], rate)
        if audio.size < clip:
            audio = np.pad(audio, (0, clip - audio.size))
        starts = np.arange(0, audio.size - clip + 1, stride)
        windows = np.lib.stride_tricks.sliding_window_view(audio, clip)[starts]
        probabilities = teacher.predict(np.ascontiguousarray(windows))
        utterance = Path(row["path"]).stem
        for word, count in wanted.items():
            scores = probabilities[:, data.LABELS.index(word)]
            for k in best_windows(scores, count, settings.min_probability, separation):
                offset_s = starts[k] / rate
                folder = Path(settings.out_dir) / word
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{utterance}_{int(round(offset_s * 1000)):06d}.wav"
                atomic_write(path, wav_bytes(windows[k], rate))
                result.paths.append(path)
                result.rows.append((str(path), word, utterance, round(float(offset_s), 3), round(float(scores[k]), 4)))
    manifest = Path(settings.out_dir) / "MINED.csv"
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    lines = ["path,word,utterance,offset_s,probability"] + [",".join(map(str, r)) for r in result.rows]
    atomic_write(manifest, ("\n".join(lines) + "\n").encode())
    _LOGGER.info("mined %d clips (%s) into %s", len(result.paths),
                 ", ".join(f"{w} {sum(r[1] == w for r in result.rows)}" for w in settings.words), settings.out_dir)
    return result
