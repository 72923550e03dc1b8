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
    speed_probability: float = 0.0
    """Share of word clips played faster or slower (pitch moves with speed, as a tape would)."""
    speed_range: tuple[float, float] = (0.85, 1.15)
    """Speed factor, uniform in this range."""
    reverb_probability: float = 0.0
    """Share of word clips convolved with a room impulse response (needs ``[data] rir`` folders)."""
    time_masks: int = 0
    """SpecAugment: number of time masks per example (rows of the feature window set to their mean)."""
    time_mask_frames: int = 0
    """SpecAugment: widest time mask, in frames."""
    frequency_masks: int = 0
    """SpecAugment: number of coefficient masks per example."""
    frequency_mask_bins: int = 0
    """SpecAugment: widest coefficient mask."""

    def __post_init__(self) -> None:
        for name in ("noise_snr_db", "silence_rms", "speed_range"):
            value = tuple(float(x) for x in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"augment {name} must be a [low, high] pair")
            object.__setattr__(self, name, value)
        if not self.silence_rms[0] > 0 or not self.speed_range[0] > 0:
            raise ValueError("augment silence_rms and speed_range must be positive")


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


def change_speed(audio: np.ndarray, chosen: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Rows in ``chosen`` played ``factor`` times faster (linear interpolation), centred, zero-padded."""
    out = audio.copy()
    n = audio.shape[1]
    positions = np.arange(n, dtype=np.float64)
    for i in np.flatnonzero(chosen):
        length = int(n / factors[i])
        sped = np.interp(np.arange(length) * factors[i], positions, audio[i]).astype(np.float32)
        if length >= n:
            start = (length - n) // 2
            out[i] = sped[start : start + n]
        else:
            start = (n - length) // 2
            out[i] = 0
            out[i, start : start + length] = sped
    return out


def add_reverb(audio: np.ndarray, chosen: np.ndarray, responses: Sequence[np.ndarray],
               rng: np.random.Generator) -> np.ndarray:
    """Rows in ``chosen`` convolved with a random room impulse response, loudness kept."""
    from scipy.signal import fftconvolve

    out = audio.copy()
    if not responses:
        return out
    for i in np.flatnonzero(chosen):
        response = responses[int(rng.integers(len(responses)))]
        peak = int(np.argmax(np.abs(response)))  # keep the direct sound where it was
        wet = fftconvolve(audio[i], response)[peak : peak + audio.shape[1]]
        out[i] = wet * (_rms(audio[i]) / _rms(wet))
    return out


def synthetic_room_responses(count: int, sample_rate_hz: int, rng: np.random.Generator,
                             rt60_s: tuple[float, float] = (0.2, 0.8),
                             direct_to_reverberant_db: tuple[float, float] = (-3.0, 12.0)) -> list[np.ndarray]:
    """``count`` made-up room impulse responses, for reverb when no recorded ones are given.

    Each is the direct sound (a unit impulse), then a diffuse tail: Gaussian noise that
    decays by 60 dB over a reverberation time drawn from ``rt60_s``, its high frequencies
    dying faster (a one-pole low-pass that closes as the tail goes on), starting after a
    few milliseconds of gap as the first reflection would, and scaled to a
    direct-to-reverberant ratio drawn from ``direct_to_reverberant_db``. The statistical
    room model (Schroeder's): no geometry, but the decay, colour and wetness vary as real
    rooms do. ``add_reverb`` keeps the direct sound in place and the loudness unchanged.
    """
    from scipy.signal import lfilter

    responses = []
    for _ in range(count):
        rt60 = rng.uniform(*rt60_s)
        gap = int(rng.uniform(0.002, 0.012) * sample_rate_hz)
        length = int(rt60 * sample_rate_hz)
        t = np.arange(length) / sample_rate_hz
        tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
        # Brighter at first, duller later: filter two copies and cross-fade between them.
        bright, dull = (lfilter([1 - a], [1, -a], tail) for a in (0.2, 0.85))
        fade = t / t[-1]
        tail = (1 - fade) * bright + fade * dull
        drr = 10 ** (rng.uniform(*direct_to_reverberant_db) / 10)
        tail *= np.sqrt(1.0 / (drr * np.sum(tail**2)))
        response = np.zeros(gap + length, np.float32)
        response[0] = 1.0
        response[gap:] += tail.astype(np.float32)
        responses.append(response)
    return responses


def spec_augment(features: np.ndarray, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment-style masks on ``(n, frames, coefficients)`` features: masked cells get the example's mean."""
    if not (settings.time_masks and settings.time_mask_frames) and not (
            settings.frequency_masks and settings.frequency_mask_bins):
        return features
    out = features.copy()
    n, frames, bins = features.shape
    means = features.mean(axis=(1, 2))
    for axis, count, widest in ((1, settings.time_masks, settings.time_mask_frames),
                                (2, settings.frequency_masks, settings.frequency_mask_bins)):
        size = frames if axis == 1 else bins
        for _ in range(count if widest else 0):
            width = rng.integers(0, widest + 1, size=n)
            start = rng.integers(0, np.maximum(size - width, 0) + 1)
            for i in np.flatnonzero(width):
                if axis == 1:
                    out[i, start[i] : start[i] + width[i], :] = means[i]
                else:
                    out[i, :, start[i] : start[i] + width[i]] = means[i]
    return out


def augment(
    audio: np.ndarray,
    is_silence: np.ndarray,
    noise: Sequence[np.ndarray],
    settings: AugmentSettings,
    sample_rate_hz: int,
    rng: np.random.Generator,
    responses: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Augmented float32 copies of int16 ``audio`` (n x samples); silence rows become pure noise.

    Order: speed, reverb, time shift, noise. Parts with probability 0 are skipped.
    """
    x = audio.astype(np.float32) / 32768.0
    words = ~is_silence
    if settings.speed_probability > 0:
        chosen = words & (rng.random(len(x)) < settings.speed_probability)
        x = change_speed(x, chosen, rng.uniform(*settings.speed_range, size=len(x)))
    if settings.reverb_probability > 0 and responses:
        x = add_reverb(x, words & (rng.random(len(x)) < settings.reverb_probability), responses, rng)
    x = time_shift(x, int(settings.time_shift_ms * sample_rate_hz / 1000), rng)
    cuts = random_noise_cuts(noise, len(x), x.shape[1], rng)
    snr_db = rng.uniform(*settings.noise_snr_db, size=len(x))
    level = _rms(x) / 10 ** (snr_db / 20) * (rng.random(len(x)) < settings.noise_probability)
    level = np.where(is_silence, silence_levels(len(x), settings, rng), level)
    x = np.where(is_silence[:, None], 0.0, x) + level[:, None].astype(np.float32) * cuts
    return np.clip(x, -1.0, 1.0)


def whispered(audio: np.ndarray, rng: np.random.Generator, n_fft: int = 512, hop: int = 128,
              lifter: int = 24, tilt_hz: tuple[float, float] = (250.0, 3000.0)) -> np.ndarray:
    """Whispered float32 copies of the rows of ``audio`` (int16 or float): the voice without its pitch.

    Each 32-ms frame keeps its spectral envelope (the real cepstrum cut to its first ``lifter``
    coefficients, 1.5 ms at 16 kHz: the vocal tract, not the glottal harmonics) and takes
    random noise as the excitation, as whispered speech does. A whisper has no glottal pulses,
    whose spectrum falls with frequency, so its low frequencies are weak: the envelope rises by
    6 dB per octave between ``tilt_hz`` (flat outside). Overlap-added, each row at the RMS of
    the original.
    """
    x = np.asarray(audio, np.float32) / (32768.0 if np.issubdtype(audio.dtype, np.integer) else 1.0)
    rows, samples = x.shape
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    pad = np.pad(x, ((0, 0), (n_fft, n_fft)))
    starts = np.arange(0, pad.shape[1] - n_fft + 1, hop)
    frames = pad[:, starts[:, None] + np.arange(n_fft)] * window
    log_magnitude = np.log(np.abs(np.fft.rfft(frames, axis=-1)) + 1e-7)
    cepstrum = np.fft.irfft(log_magnitude, n=n_fft, axis=-1)
    cepstrum[..., lifter : n_fft - lifter + 1] = 0
    hz = np.fft.rfftfreq(n_fft, 1 / 16000)
    envelope = np.exp(np.fft.rfft(cepstrum, axis=-1).real) * np.clip(hz, *tilt_hz) / tilt_hz[1]
    excitation = rng.standard_normal(envelope.shape + (2,)).astype(np.float32).view(np.complex64)[..., 0]
    out_frames = np.fft.irfft(envelope * excitation, n=n_fft, axis=-1) * window
    out = np.zeros_like(pad)
    norm = np.zeros(pad.shape[1], np.float32)
    for k, start in enumerate(starts):
        out[:, start : start + n_fft] += out_frames[:, k]
        norm[start : start + n_fft] += window**2
    out = out[:, n_fft : n_fft + samples] / np.maximum(norm[n_fft : n_fft + samples], 1e-3)
    out *= (_rms(x) / _rms(out))[:, None]
    return np.clip(out, -1.0, 1.0).astype(np.float32)
