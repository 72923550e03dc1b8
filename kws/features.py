"""MFCC front end shared by training and runtime.

The maths follows ``tf.signal``: a periodic Hann window, magnitude STFT, an
HTK-scale triangular mel matrix (as ``tf.signal.linear_to_mel_weight_matrix``),
``log(mel + log_floor)`` and a DCT-II scaled as
``tf.signal.mfccs_from_log_mel_spectrograms``. Audio is float in [-1, 1].

``Mfcc.compute`` turns a clip into ``frames x coefficients``;
``MfccStream.feed`` takes chunks of any size and returns only the new frames.
Both go through ``Mfcc.frames_from_matrix`` so they agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kws.errors import FeatureSettingsError

_LOGGER = logging.getLogger(__name__)

WINDOWS = ("hann",)
NORMALIZATIONS = ("none",)
_BATCH_CLIPS = 16  # clips per block in compute_batch: keeps the working set in cache


@dataclass(frozen=True)
class FeatureSettings:
    """How audio becomes MFCC frames. Every model bundle records these."""

    sample_rate_hz: int = 16000
    """Sample rate of the audio the front end takes."""
    window_ms: float = 30.0
    """Length of one analysis frame."""
    hop_ms: float = 20.0
    """Step between frames."""
    n_fft: int = 512
    """FFT size; the frame is zero-padded to it."""
    window: str = "hann"
    """Window function (periodic)."""
    n_mels: int = 40
    """Number of triangular mel bands."""
    fmin_hz: float = 20.0
    """Lower edge of the first mel band."""
    fmax_hz: float = 7600.0
    """Upper edge of the last mel band."""
    n_mfcc: int = 10
    """Number of cepstral coefficients kept (from c0)."""
    log_floor: float = 1e-6
    """Added to the mel energies before the log."""
    normalization: str = "none"
    """Feature normalisation after the DCT; only ``none`` is defined."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def window_samples(self) -> int:
        return int(round(self.window_ms * self.sample_rate_hz / 1000))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_ms * self.sample_rate_hz / 1000))

    def frames_for(self, n_samples: int) -> int:
        """Number of whole frames in ``n_samples`` of audio (no padding)."""
        if n_samples < self.window_samples:
            return 0
        return 1 + (n_samples - self.window_samples) // self.hop_samples

    def samples_for(self, n_frames: int) -> int:
        """Smallest number of samples that yields ``n_frames`` frames."""
        return self.window_samples + (n_frames - 1) * self.hop_samples

    def validate(self) -> None:
        def bad(field: str, why: str) -> FeatureSettingsError:
            return FeatureSettingsError(f"feature setting {field}={getattr(self, field)!r}: {why}")

        if not isinstance(self.sample_rate_hz, int) or self.sample_rate_hz <= 0:
            raise bad("sample_rate_hz", "must be a positive integer")
        for name in ("window_ms", "hop_ms"):
            value = getattr(self, name)
            samples = value * self.sample_rate_hz / 1000
            if not value > 0 or abs(samples - round(samples)) > 1e-6:
                raise bad(name, f"must be positive and a whole number of samples at {self.sample_rate_hz} Hz")
        if not isinstance(self.n_fft, int) or self.n_fft < self.window_samples:
            raise bad("n_fft", f"must be an integer >= the window ({self.window_samples} samples)")
        if self.window not in WINDOWS:
            raise bad("window", f"must be one of {', '.join(WINDOWS)}")
        if not isinstance(self.n_mels, int) or self.n_mels < 1:
            raise bad("n_mels", "must be a positive integer")
        if not 0 <= self.fmin_hz < self.fmax_hz:
            raise bad("fmin_hz", f"must be >= 0 and below fmax_hz={self.fmax_hz}")
        if self.fmax_hz > self.sample_rate_hz / 2:
            raise bad("fmax_hz", f"must not exceed the Nyquist frequency {self.sample_rate_hz / 2} Hz")
        if not isinstance(self.n_mfcc, int) or not 1 <= self.n_mfcc <= self.n_mels:
            raise bad("n_mfcc", f"must be an integer from 1 to n_mels={self.n_mels}")
        if not self.log_floor > 0:
            raise bad("log_floor", "must be positive")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", f"must be one of {', '.join(NORMALIZATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSettings":
        if not isinstance(data, Mapping):
            raise FeatureSettingsError("feature settings must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatureSettingsError(
                f"unknown feature setting(s) {', '.join(unknown)}: this version of kws cannot produce them"
            )
        missing = sorted(known - set(data))
        if missing:
            raise FeatureSettingsError(f"feature settings lack {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as error:  # e.g. a string where a number belongs
            raise FeatureSettingsError(f"feature settings: {error}") from None


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale, as ``tf.signal``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(settings: FeatureSettings) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular weights, as ``tf.signal.linear_to_mel_weight_matrix``."""
    n_bins = settings.n_fft // 2 + 1
    linear_hz = np.linspace(0.0, settings.sample_rate_hz / 2, n_bins)[1:]
    bins_mel = hz_to_mel(linear_hz)[:, None]
    edges = np.linspace(hz_to_mel(settings.fmin_hz), hz_to_mel(settings.fmax_hz), settings.n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.vstack([np.zeros((1, settings.n_mels)), weights])


def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """``(n_mels, n_mfcc)`` DCT-II scaled as ``tf.signal.mfccs_from_log_mel_spectrograms``."""
    n = np.arange(n_mels)[:, None]
    k = np.arange(n_mfcc)[None, :]
    return np.sqrt(2.0 / n_mels) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels))


class Mfcc:
    """Batch MFCC for one ``FeatureSettings``; the matrices are built once."""

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        size = settings.window_samples
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)).astype(np.float32)
        self._mel = mel_matrix(settings).astype(np.float32)
        self._dct = dct_matrix(settings.n_mels, settings.n_mfcc).astype(np.float32)

    def frames_from_matrix(self, frames: np.ndarray) -> np.ndarray:
        """MFCCs of a ``(n, window_samples)`` matrix of raw frames: ``(n, n_mfcc)`` float32."""
        # einsum without BLAS sums each row in the same order whatever the number
        # of rows, so streaming (few rows) and batch (many rows) agree bit for bit.
        spectrum = np.abs(np.fft.rfft(frames * self._window, n=self.settings.n_fft, axis=-1)).astype(np.float32)
        mel = np.einsum("nf,fm->nm", spectrum, self._mel, optimize=False)
        log_mel = np.log(mel + np.float32(self.settings.log_floor))
        return np.einsum("nf,fm->nm", log_mel, self._dct, optimize=False)

    def compute(self, audio: np.ndarray) -> np.ndarray:
        """MFCCs of a whole clip: ``(frames, n_mfcc)``; no padding, so a clip shorter than a window has none."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be one channel (1-D), got shape {audio.shape}")
        count = self.settings.frames_for(audio.size)
        if count == 0:
            return np.zeros((0, self.settings.n_mfcc), np.float32)
        # (as_strided, not sliding_window_view: the same view at a fraction of the cost per call)
        frames = np.lib.stride_tricks.as_strided(
            audio, shape=(count, self.settings.window_samples),
            strides=(audio.strides[0] * self.settings.hop_samples, audio.strides[0]), writeable=False)
        return self.frames_from_matrix(frames)

    def compute_batch(self, audio: np.ndarray) -> np.ndarray:
        """MFCCs of equal-length clips ``(n, samples)`` -> ``(n, frames, n_mfcc)``; same numbers as ``compute``."""
        audio = np.asarray(audio, dtype=np.float32)
        count = self.settings.frames_for(audio.shape[1])
        out = np.empty((len(audio), count, self.settings.n_mfcc), np.float32)
        for start in range(0, len(audio), _BATCH_CLIPS):
            block = audio[start : start + _BATCH_CLIPS]
            frames = np.lib.stride_tricks.sliding_window_view(block, self.settings.window_samples, axis=1)
            frames = frames[:, :: self.settings.hop_samples][:, :count]
            flat = self.frames_from_matrix(frames.reshape(-1, self.settings.window_samples))
            out[start : start + len(block)] = flat.reshape(len(block), count, self.settings.n_mfcc)
        return out

    def stream(self) -> "MfccStream":
        return MfccStream(self)


class MfccStream:
    """Streaming MFCC: ``feed`` chunks of any size, get only the frames they complete.

    ``push`` only buffers audio; ``take`` computes every frame the buffer completes,
    in one batch. A caller that needs frames only every so often (the spotter, at
    each inference) pushes every chunk and takes when it needs them: one FFT call
    for several frames instead of one per chunk. The buffer is allocated once and
    grows only for a chunk larger than any before.
    """

    def __init__(self, mfcc: Mfcc):
        self._mfcc = mfcc
        settings = mfcc.settings
        self._hop = settings.hop_samples
        self._window = settings.window_samples
        self._buffer = np.zeros(self._window + 8 * self._hop, np.float32)
        self._filled = 0

    @property
    def settings(self) -> FeatureSettings:
        return self._mfcc.settings

    @property
    def buffered_samples(self) -> int:
        """Samples pushed and not yet consumed by ``take``."""
        return self._filled

    @property
    def available_frames(self) -> int:
        """Frames that ``take`` would return now."""
        return 0 if self._filled < self._window else 1 + (self._filled - self._window) // self._hop

    def push(self, chunk: np.ndarray) -> None:
        """Buffer ``chunk`` (float32 samples); computes nothing."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        end = self._filled + chunk.size
        if end > self._buffer.size:
            grown = np.zeros(max(end, 2 * self._buffer.size), np.float32)
            grown[: self._filled] = self._buffer[: self._filled]
            self._buffer = grown
        self._buffer[self._filled : end] = chunk
        self._filled = end

    def take(self) -> np.ndarray:
        """Every frame the buffered audio completes, ``(frames, n_mfcc)``; their audio leaves the buffer."""
        count = self.available_frames
        if count == 0:
            return np.zeros((0, self.settings.n_mfcc), np.float32)
        audio = self._buffer[: self._filled]
        if not np.isfinite(audio).all():  # a broken driver or a wrong sample format: never compute on NaN
            np.nan_to_num(audio, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        frames = self._mfcc.compute(audio)
        consumed = count * self._hop
        left = self._filled - consumed
        self._buffer[:left] = self._buffer[consumed : self._filled]
        self._filled = left
        return frames

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """``push`` then ``take``."""
        self.push(chunk)
        return self.take()

    def reset(self) -> None:
        self._filled = 0

    def close(self) -> None:
        self.reset()
