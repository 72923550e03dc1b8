"""Speech Commands: the official folder layout, the 12-class task, a decoded cache.

Works on the official download (``speech_commands_v0.02.tar.gz`` unpacked) and on
any copy in the same layout: ``<word>/<clip>`` in any format soundfile reads,
``validation_list.txt`` and ``testing_list.txt`` (paths relative to the root;
the file extension is ignored, so a re-encoded copy still matches), and
``_background_noise_/`` with long noise recordings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.audio_file import read_audio
from kws.errors import KwsError

_LOGGER = logging.getLogger(__name__)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
LABELS = (SILENCE, UNKNOWN) + KEYWORDS
"""Output order of the standard 12-class task."""

SAMPLE_RATE_HZ = 16000
CLIP_SAMPLES = SAMPLE_RATE_HZ  # one second
NOISE_DIR = "_background_noise_"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif"}


class DataError(KwsError):
    """A data set folder that does not have the expected layout."""


@dataclass(frozen=True)
class Clip:
    path: Path
    word: str
    """The folder name: the spoken word, or a label in a test-set layout."""
    split: str
    """``training``, ``validation`` or ``testing``."""
    speaker: str

    def label(self, labels: Sequence[str] = LABELS) -> str:
        return self.word if self.word in labels else UNKNOWN


def _list_key(relative: str) -> str:
    """``word/file.ext`` -> ``word/file``: split lists match whatever the encoding."""
    return os.path.splitext(relative.strip().replace("\\", "/"))[0]


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {_list_key(line) for line in path.read_text().splitlines() if line.strip()}


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def scan_speech_commands(root: str | Path) -> list[Clip]:
    """Every clip of a Speech Commands root with its split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist")
    validation = _read_list(root / "validation_list.txt")
    testing = _read_list(root / "testing_list.txt")
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for path in audio_files(folder):
            key = f"{folder.name}/{path.stem}"
            split = "testing" if key in testing else "validation" if key in validation else "training"
            clips.append(Clip(path, folder.name, split, path.stem.split("_nohash_")[0]))
    if not clips:
        raise DataError(f"{root} has no <word>/<clip> audio files: is it a Speech Commands folder?")
    _LOGGER.info(
        "%s: %d clips (%d training, %d validation, %d testing)",
        root,
        len(clips),
        sum(c.split == "training" for c in clips),
        sum(c.split == "validation" for c in clips),
        sum(c.split == "testing" for c in clips),
    )
    return clips


def scan_labelled_folder(root: str | Path, split: str = "testing") -> list[Clip]:
    """A test folder in the official test-set layout ``<label>/*`` (also ``_silence_``, ``_unknown_``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"test folder {root} does not exist")
    clips = [
        Clip(path, folder.name, split, path.stem.split("_nohash_")[0])
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in audio_files(folder)
    ]
    if not clips:
        raise DataError(f"{root} has no <label>/<clip> audio files")
    return clips


def noise_files(root: str | Path) -> list[Path]:
    folder = Path(root) / NOISE_DIR
    return audio_files(folder) if folder.is_dir() else []


def fit_clip(audio: np.ndarray, samples: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad or centre-crop to exactly ``samples``."""
    if audio.size >= samples:
        start = (audio.size - samples) // 2
        return audio[start : start + samples]
    return np.pad(audio, (0, samples - audio.size))


def _decode(path: Path) -> np.ndarray:
    audio = fit_clip(read_audio(path, SAMPLE_RATE_HZ))
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def decode_clips(paths: Sequence[Path], cache_dir: Path | None = None, workers: int = 2) -> np.ndarray:
    """``(n, 16000)`` int16 audio of ``paths``, cached in ``cache_dir`` under a hash of the list."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache = Path(cache_dir) / f"clips-{digest.hexdigest()[:20]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        _LOGGER.info("using decoded audio from %s", cache)
        return np.load(cache)
    _LOGGER.info("decoding %d clips with %d worker(s)", len(paths), workers)
    if workers > 1 and len(paths) > 200:
        with ProcessPoolExecutor(workers) as pool:
            audio = np.stack(list(pool.map(_decode, paths, chunksize=256)))
    else:
        audio = np.stack([_decode(p) for p in paths]) if paths else np.zeros((0, CLIP_SAMPLES), np.int16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # a temporary name of its own: two runs decoding the same list at once must not share one
        with tempfile.NamedTemporaryFile(dir=cache.parent, prefix=cache.stem + ".", suffix=".tmp",
                                         delete=False) as tmp:
            np.save(tmp, audio)
        os.replace(tmp.name, cache)
    return audio


def load_test_folder(folder: str | Path, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A ``<label>/*`` test folder as float32 one-second clips ``(n, 16000)`` and label indices."""
    clips = scan_labelled_folder(folder)
    audio = decode_clips([c.path for c in clips], cache_dir)
    return audio.astype(np.float32) / 32768.0, np.array([LABELS.index(c.label()) for c in clips])


def load_noise(paths: Sequence[Path]) -> list[np.ndarray]:
    return [read_audio(p, SAMPLE_RATE_HZ) for p in paths]
