"""Reading audio files: any format soundfile reads, else librosa's decoders.

librosa is imported only here and only when a file needs it (a format soundfile
cannot read, or a sample rate other than the model's), never on the per-frame
path and never at daemon start-up.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from kws.errors import AudioError

_LOGGER = logging.getLogger(__name__)


def read_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decode ``path`` to mono float32 in [-1, 1] at ``sample_rate_hz``."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        data, rate = _read_with_librosa(path, error)
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate_hz:
        audio = resample(audio, rate, sample_rate_hz)
    return np.ascontiguousarray(audio, dtype=np.float32)


def wav_bytes(audio: np.ndarray, sample_rate_hz: int) -> bytes:
    """Mono 16-bit PCM WAV file bytes; float samples scale by 32768, so what ``read_audio`` gave comes back exactly."""
    import io
    import wave

    samples = np.nan_to_num(np.asarray(audio, np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    import librosa

    return librosa.resample(np.asarray(audio, np.float32), orig_sr=from_hz, target_sr=to_hz, res_type="soxr_hq")


def _read_with_librosa(path: Path, first_error: Exception) -> tuple[np.ndarray, int]:
    try:
        import librosa
    except ImportError:
        raise AudioError(f"cannot read audio file {path}: {first_error}") from None
    try:
        with warnings.catch_warnings():  # its fallback chatter; the outcome is reported below
            warnings.simplefilter("ignore")
            audio, rate = librosa.load(str(path), sr=None, mono=True)
    except Exception as error:  # librosa surfaces decoder errors of many types
        reason = str(error).strip() or type(error).__name__
        raise AudioError(f"cannot read audio file {path}: {first_error} (nor could librosa: {reason})") from None
    if audio.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    return audio[:, None], int(rate)
