"""Augmentation of one-second int16 clips, vectorised over a batch (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Standard Speech Commands augmentation; each part can be switched off with 0."""

    time_shift_ms: float = 100.0
    """Clips move by up to this much, earlier or later, filled with zeros."""
    noise_probability: float = 0.8
    """Share of word clips that get background noise mixed in."""
    noise_max_gain: float = 0.1
    """Noise is scaled by a uniform gain in [0, this] before mixing."""
    silence_max_gain: float = 1.0
    """``_silence_`` examples are noise cuts scaled by a uniform gain in [0, this]."""


def random_noise_cuts(noise: Sequence[np.ndarray], count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``samples``-long cuts (float32) from the noise recordings."""
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
    return out


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
    gain = rng.uniform(0, settings.noise_max_gain, size=len(x)) * (rng.random(len(x)) < settings.noise_probability)
    gain = np.where(is_silence, rng.uniform(0, settings.silence_max_gain, size=len(x)), gain)
    x = np.where(is_silence[:, None], 0.0, x) + gain[:, None].astype(np.float32) * cuts
    return np.clip(x, -1.0, 1.0)
