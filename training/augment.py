"""Augmentation of one-second int16 clips, vectorised over a batch (numpy only).

Noise is scaled by RMS, not by a raw gain, so the result does not depend on how
loud the noise recordings happen to be (the copies in ../shared are quiet, about
-48 dBFS, while real rooms and the test set's ``_silence_`` clips reach -10 dBFS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Standard Speech Commands augmentation; each part can be switched off."""

    time_shift_ms: float = 100.0
    """Clips move by up to this much, earlier or later, filled with zeros (0 = off)."""
    noise_probability: float = 0.8
    """Share of word clips that get background noise mixed in (0 = off)."""
    noise_snr_db: tuple[float, float] = (3.0, 30.0)
    """Signal-to-noise ratio of the mixed noise, uniform in this range."""
    silence_rms: tuple[float, float] = (1e-4, 0.3)
    """``_silence_`` examples are noise cuts at an RMS log-uniform in this range (full scale = 1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_snr_db", tuple(float(x) for x in self.noise_snr_db))
        object.__setattr__(self, "silence_rms", tuple(float(x) for x in self.silence_rms))
        if len(self.noise_snr_db) != 2 or len(self.silence_rms) != 2 or not 0 < self.silence_rms[0] <= self.silence_rms[1]:
            raise ValueError("noise_snr_db and silence_rms are [low, high] pairs (silence_rms > 0)")


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=-1)) + 1e-9


def random_noise_cuts(noise: Sequence[np.ndarray], count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``samples``-long cuts (float32) from the noise recordings, each scaled to RMS 1."""
    out = np.zeros((count, samples), np.float32)
    if not noise:
        return out
    which = rng.integers(len(noise), size=count)
    for i, k in enumerate(which):
        source = noise[k]
        if source.size <= samples:
            out[i, : source.size] = source
        else:
            start = int(rng.integers(source.size - samples))
            out[i] = source[start : start + samples]
    return (out / _rms(out)[:, None]).astype(np.float32)


def silence_levels(count: int, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    low, high = np.log(settings.silence_rms)
    return np.exp(rng.uniform(low, high, size=count)).astype(np.float32)


def time_shift(audio: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    if max_shift <= 0:
        return audio
    out = np.zeros_like(audio)
    n = audio.shape[1]
    for i, shift in enumerate(rng.integers(-max_shift, max_shift + 1, size=len(audio))):
        if shift >= 0:
            out[i, shift:] = audio[i, : n - shift]
        else:
            out[i, :shift] = audio[i, -shift:]
    return out


def augment(
    audio: np.ndarray,
    is_silence: np.ndarray,
    noise: Sequence[np.ndarray],
    settings: AugmentSettings,
    sample_rate_hz: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Augmented float32 copies of int16 ``audio`` (n x samples); silence rows become pure noise."""
    x = audio.astype(np.float32) / 32768.0
    x = time_shift(x, int(settings.time_shift_ms * sample_rate_hz / 1000), rng)
    cuts = random_noise_cuts(noise, len(x), x.shape[1], rng)
    snr_db = rng.uniform(*settings.noise_snr_db, size=len(x))
    level = _rms(x) / 10 ** (snr_db / 20) * (rng.random(len(x)) < settings.noise_probability)
    level = np.where(is_silence, silence_levels(len(x), settings, rng), level)
    x = np.where(is_silence[:, None], 0.0, x) + level[:, None].astype(np.float32) * cuts
    return np.clip(x, -1.0, 1.0)
