"""``kws record``: guided recording of a custom wake word, from the microphone or from files.

Each take is trimmed to its speech plus a margin and checked (clipping, level, length,
cut off) by the pure function ``check_take``. Accepted takes become ``OUT/WORD/NNNN.wav``
(16 kHz mono PCM16), each written atomically and numbered on from the clips already
there, so an interrupted session resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import numpy as np

from kws.errors import AudioError, ConfigError, KwsError

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
"""Rate of the clips written (the models' rate)."""
SILENCE_DBFS = -100.0
"""Level given to digital silence, so that logarithms stay finite."""
CLIP_NAME = re.compile(r"^(\d{4,})\.wav$")
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff",
                            ".au", ".caf", ".w64", ".webm"})
"""What ``--from`` picks up in folders (files named explicitly are tried whatever their suffix)."""


@dataclass(frozen=True)
class TakeChecks:
    """What a take must be to be kept. Levels are the RMS of 10 ms frames in dBFS."""

    frame_ms: float = 10.0
    """Length of the analysis frames."""
    floor_percentile: float = 10.0
    """The take's noise floor is this percentile of its frame levels (digital silence left out) ..."""
    file_floor_percentile: float = 30.0
    """... and a whole file's (a file holds more background around the word than a take, and less evenly)."""
    above_floor_db: float = 10.0
    """A frame is speech when it is at least this far above the noise floor ..."""
    below_peak_db: float = 30.0
    """... and at most this far below the loudest frame (the higher of the two thresholds applies)."""
    margin_s: float = 0.1
    """Audio kept before the first and after the last speech frame."""
    clip_level: float = 0.99
    """A sample whose magnitude reaches this (full scale = 1) is clipped ..."""
    max_clipped_samples: int = 4
    """... and a take with more clipped samples than this is rejected."""
    min_peak_dbfs: float = -40.0
    """The loudest frame must reach this level."""
    min_voiced_s: float = 0.15
    """Shortest speech (first to last speech frame) kept."""
    max_voiced_s: float = 1.8
    """Longest speech kept; a take window also limits it to its length minus both margins."""
    edge_s: float = 0.02
    """Speech within this of a take window's start or end was cut off."""
    max_gap_s: float = 0.3
    """In a whole file, speech frames closer than this belong to one utterance; the one with most energy is kept."""

    @property
    def frame_samples(self) -> int:
        return max(1, round(SAMPLE_RATE_HZ * self.frame_ms / 1000))


@dataclass(frozen=True)
class RecordSettings:
    """One ``kws record`` session."""

    word: str
    """The word; its clips go to ``out_dir / word``."""
    out_dir: Path = Path("recordings")
    """Parent folder of the word's folder."""
    count: int = 50
    """Clips wanted in the word's folder, counting those already there (microphone only)."""
    device: str | None = None
    """Input device: index or part of its name; None = the default."""
    take_s: float = 2.0
    """Length of each take window."""
    countdown_s: float = 1.0
    """Countdown before each take (0 = none)."""
    meter_interval_s: float = 0.1
    """Redraw period of the level meter (on a terminal only)."""
    checks: TakeChecks = field(default_factory=TakeChecks)

    def __post_init__(self) -> None:
        if not self.word.strip() or self.word in (".", "..") or "/" in self.word or "\0" in self.word:
            raise ConfigError(f"--word {self.word!r} cannot be a folder name: "
                              "give the word itself, e.g. --word computer")
        if self.count < 1:
            raise ConfigError(f"--count {self.count}: give the number of clips wanted, at least 1")
        shortest = self.checks.min_voiced_s + 2 * self.checks.margin_s
        if not self.take_s > shortest:
            raise ConfigError(f"--take-s {self.take_s:g} is too short: a take needs more than {shortest:g} s")
        if not self.countdown_s >= 0:
            raise ConfigError(f"--countdown-s {self.countdown_s:g}: give 0 or more seconds")

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / self.word

    @property
    def take_samples(self) -> int:
        return round(self.take_s * SAMPLE_RATE_HZ)

    @property
    def countdown_samples(self) -> int:
        return round(self.countdown_s * SAMPLE_RATE_HZ)


@dataclass(frozen=True)
class TakeResult:
    """What ``check_take`` found. ``trimmed`` is the speech plus margins (the whole take if none was found)."""

    accepted: bool
    reason: str | None
    """Short reason for a rejection ("too quiet", "clipped", ...); None when accepted."""
    detail: str
    """The measurement behind the reason, and what to do about it."""
    trimmed: np.ndarray
    peak_dbfs: float
    voiced_s: float
    speech_centre_s: float = 0.0
    """Middle of the speech found, in seconds from the start of the take (0 when none was found)."""

    @property
    def message(self) -> str:
        return f"{self.reason} ({self.detail})" if self.reason else f"{self.trimmed.size / SAMPLE_RATE_HZ:.2f} s"


def frame_levels_dbfs(audio: np.ndarray, frame_samples: int) -> np.ndarray:
    """RMS level of each whole frame of ``audio`` in dBFS (a trailing partial frame is left out)."""
    frames = audio[: audio.size // frame_samples * frame_samples].reshape(-1, frame_samples).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1)) if frames.size else np.zeros(0)
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), SILENCE_DBFS)


def loudest_utterance(voiced: np.ndarray, levels_dbfs: np.ndarray, max_gap_frames: int,
                      min_frames: int = 1) -> np.ndarray:
    """The run of ``voiced`` frame indices (gaps up to ``max_gap_frames``) holding the most energy.

    Runs of at least ``min_frames`` come first (if there are any), so that a click,
    however loud, does not outweigh a word.
    """
    breaks = np.flatnonzero(np.diff(voiced) > max_gap_frames + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks + 1, [voiced.size]])
    power = 10 ** (levels_dbfs[voiced] / 10)
    runs = list(zip(starts, ends))
    long_enough = [(a, b) for a, b in runs if voiced[b - 1] - voiced[a] + 1 >= min_frames]
    a, b = max(long_enough or runs, key=lambda run: power[run[0] : run[1]].sum())
    return voiced[a:b]


def check_take(audio: np.ndarray, checks: TakeChecks = TakeChecks(), *, whole_file: bool = False) -> TakeResult:
    """Trim a take (16 kHz mono float in [-1, 1]) to its speech and decide whether to keep it.

    ``whole_file``: ``audio`` is a whole file rather than a take window, so speech may touch
    its ends and only ``max_voiced_s`` limits its length; and only its loudest utterance is
    kept (a click or a word before or after the wake word is cut off). Pure: ``audio`` is
    not changed.
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    frame = checks.frame_samples
    levels = frame_levels_dbfs(audio, frame)
    peak = float(levels.max()) if levels.size else SILENCE_DBFS
    audible = levels[levels > SILENCE_DBFS + 1]  # digital silence (padding of a file) is not the room's floor
    percentile = checks.file_floor_percentile if whole_file else checks.floor_percentile
    floor = float(np.percentile(audible if audible.size else levels, percentile)) if levels.size else SILENCE_DBFS
    voiced = np.flatnonzero(levels >= max(floor + checks.above_floor_db, peak - checks.below_peak_db))
    if whole_file and voiced.size:
        voiced = loudest_utterance(voiced, levels, round(checks.max_gap_s * 1000 / checks.frame_ms),
                                   round(checks.min_voiced_s * 1000 / checks.frame_ms))
    if voiced.size:
        first, last = int(voiced[0]), int(voiced[-1])
        margin = round(checks.margin_s * SAMPLE_RATE_HZ)
        trimmed = audio[max(0, first * frame - margin) : (last + 1) * frame + margin].copy()
        voiced_s = (last - first + 1) * frame / SAMPLE_RATE_HZ
        centre_s = (first + last + 1) * frame / 2 / SAMPLE_RATE_HZ
    else:
        first, last, trimmed, voiced_s, centre_s = 0, 0, audio.copy(), 0.0, 0.0

    def rejected(reason: str, detail: str) -> TakeResult:
        return TakeResult(False, reason, detail, trimmed, peak, voiced_s, centre_s)

    clipped = int(np.count_nonzero(np.abs(audio) >= checks.clip_level))
    if clipped > checks.max_clipped_samples:
        return rejected("clipped", f"{clipped} samples at full scale; move back or lower the input gain")
    if peak < checks.min_peak_dbfs:
        return rejected("too quiet", f"{peak:.0f} dBFS peak; move closer or raise the input gain")
    if not voiced.size:
        return rejected("too quiet", f"{peak:.0f} dBFS peak, only {peak - floor:.0f} dB above the background; "
                                     "move closer or find a quieter place")
    edge = max(1, round(checks.edge_s * SAMPLE_RATE_HZ / frame))
    if not whole_file and first < edge:
        return rejected("cut off", "started before the countdown ended; wait for it, then speak")
    if not whole_file and last >= levels.size - edge:
        return rejected("cut off", "still speaking when the take ended; start right after the countdown "
                                   "or give a longer --take-s")
    if voiced_s < checks.min_voiced_s:
        return rejected("too short", f"{voiced_s:.2f} s of speech; say the whole word")
    longest = checks.max_voiced_s
    if not whole_file:
        longest = min(longest, audio.size / SAMPLE_RATE_HZ - 2 * checks.margin_s)
    if voiced_s > longest:
        return rejected("too long", f"{voiced_s:.2f} s of speech, at most {longest:.2f} s; say just the word, "
                                    "with nothing before or after it")
    return TakeResult(True, None, "", trimmed, peak, voiced_s, centre_s)


# --------------------------------------------------------------------------- talking to the person recording


class Console:
    """What ``kws record`` tells the person recording, on ``stream`` (stderr).

    The live level meter is drawn, and redrawn in place, only when ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO, bar_width: int = 30, meter_floor_dbfs: float = -60.0):
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.bar_width = bar_width
        self.meter_floor_dbfs = meter_floor_dbfs
        self._line_open = False  # something is on the current line without its newline
        self._meter_drawn = 0  # length of the meter line on screen

    def write(self, text: str) -> None:
        """Part of a line (a countdown tick); ``say`` ends it."""
        self._erase_meter()
        self.stream.write(text)
        self.stream.flush()
        self._line_open = not text.endswith("\n")

    def say(self, line: str) -> None:
        self._erase_meter()
        self.stream.write(("\n" if self._line_open else "") + line + "\n")
        self.stream.flush()
        self._line_open = False

    def meter(self, dbfs: float) -> None:
        """Redraw the level meter: a bar from ``meter_floor_dbfs`` to 0 dBFS, and the level."""
        if not self.live:
            return
        filled = round(self.bar_width * min(1.0, max(0.0, 1 - dbfs / self.meter_floor_dbfs)))
        text = f"  [{'#' * filled}{'-' * (self.bar_width - filled)}] {max(dbfs, SILENCE_DBFS):6.1f} dBFS"
        self.stream.write("\r" + text.ljust(self._meter_drawn))
        self.stream.flush()
        self._meter_drawn = len(text)

    def _erase_meter(self) -> None:
        if self._meter_drawn:
            self.stream.write("\r" + " " * self._meter_drawn + "\r")
            self._meter_drawn = 0


class _TakeProgress:
    """Countdown, then the level meter, driven by the audio as it arrives (so both keep the microphone's time)."""

    def __init__(self, console: Console, countdown_samples: int, meter_samples: int):
        self.console = console
        self.countdown_samples = countdown_samples
        self.meter_samples = max(1, meter_samples)
        self._shown: int | None = None
        self._speaking = False
        self._energy, self._count = 0.0, 0

    def update(self, position: int, chunk: np.ndarray) -> None:
        """``chunk`` has just been captured, ending ``position`` samples after the countdown began."""
        remaining = self.countdown_samples - position
        if remaining > 0:
            tick = math.ceil(remaining / SAMPLE_RATE_HZ)
            if tick != self._shown:
                self.console.write(f"{'  ' if self._shown is None else ''}{tick}... ")
                self._shown = tick
            return
        if not self._speaking:
            self.console.write(("" if self._shown else "  ") + "speak now\n")
            self._speaking = True
        speech = chunk[max(0, chunk.size + remaining) :].astype(np.float64)  # the part after the countdown
        self._energy += float(np.sum(speech**2))
        self._count += speech.size
        if self._count >= self.meter_samples:
            self.console.meter(10 * math.log10(max(self._energy / self._count, 1e-12)))
            self._energy, self._count = 0.0, 0


# --------------------------------------------------------------------------- the clips folder


@dataclass
class Tally:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    """Rejections by reason."""

    @property
    def attempts(self) -> int:
        return self.accepted + sum(self.rejected.values())


def _clips(n: int) -> str:
    return f"{n} clip" if n == 1 else f"{n} clips"


def existing_clips(folder: Path) -> dict[int, Path]:
    """``NNNN.wav`` clips in ``folder`` by number."""
    if not folder.is_dir():
        return {}
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := CLIP_NAME.match(p.name)) and p.is_file()}
    return dict(sorted(found.items()))


def prepare_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create folder {folder}: {error.strerror or error}; give another --out") from None
    return folder


def save_clip(folder: Path, audio: np.ndarray) -> Path:
    """``audio`` as the next ``NNNN.wav`` in ``folder`` (16 kHz mono PCM16), written atomically."""
    from kws.audio_file import wav_bytes
    from kws.bundle import atomic_write

    number = max(existing_clips(folder), default=0) + 1
    path = folder / f"{number:04d}.wav"
    try:
        atomic_write(path, wav_bytes(audio, SAMPLE_RATE_HZ))
    except OSError as error:
        raise KwsError(f"cannot write {path}: {error.strerror or error}; "
                       "check the folder's permissions and free space") from None
    return path


def summary(tally: Tally, folder: Path) -> list[str]:
    import soundfile

    durations = []
    for path in existing_clips(folder).values():
        try:
            durations.append(soundfile.info(str(path)).duration)
        except (soundfile.LibsndfileError, RuntimeError) as error:
            _LOGGER.warning("cannot read %s: %s", path, error)
    reasons = ", ".join(f"{reason} {n}" for reason, n in tally.rejected.most_common())
    rejected = sum(tally.rejected.values())
    median = f", median duration {float(np.median(durations)):.2f} s" if durations else ""
    return [f"accepted {tally.accepted}, rejected {rejected}" + (f" ({reasons})" if reasons else ""),
            f"{_clips(len(durations))} now in {folder}{median}"]


# --------------------------------------------------------------------------- microphone and files


def record_takes(settings: RecordSettings, console: Console, tally: Tally) -> None:
    """Guided takes from the microphone until ``settings.count`` clips are in the folder."""
    from kws.sources import MicrophoneSource

    folder = settings.folder
    have = len(existing_clips(folder))
    if have:
        more = f"recording {settings.count - have} more" if have < settings.count else "nothing to record"
        console.say(f"{_clips(have)} already in {folder}; {more}")
    if have >= settings.count:
        return
    source = MicrophoneSource(settings.device, SAMPLE_RATE_HZ)
    try:
        source.start()
        chunks = source.chunks()
        when = "after the countdown" if settings.countdown_samples else "now"
        for take in range(have + 1, settings.count + 1):
            while True:
                console.say(f"take {take}/{settings.count}: say '{settings.word}' {when}")
                source.drain()  # what arrived while the last take was checked and saved
                result = check_take(capture_take(chunks, settings, console), settings.checks)
                _LOGGER.debug("take %d: peak %.1f dBFS, speech %.2f s, %s", take, result.peak_dbfs, result.voiced_s,
                              result.reason or "accepted")
                if result.accepted:
                    path = save_clip(folder, result.trimmed)
                    tally.accepted += 1
                    console.say(f"take {take} kept: {result.message} -> {path}")
                    break
                tally.rejected[result.reason] += 1
                console.say(f"take {take} rejected: {result.message}")
    finally:
        source.close()


def capture_take(chunks: Iterator[np.ndarray], settings: RecordSettings, console: Console) -> np.ndarray:
    """The countdown, then ``take_s`` of audio captured after it."""
    countdown, total = settings.countdown_samples, settings.countdown_samples + settings.take_samples
    progress = _TakeProgress(console, countdown, round(settings.meter_interval_s * SAMPLE_RATE_HZ))
    progress.update(0, np.zeros(0, np.float32))
    parts, position = [], 0
    while position < total:
        chunk = next(chunks)
        parts.append(chunk)
        position += chunk.size
        progress.update(position, chunk)
    return np.concatenate(parts)[countdown:total]


def find_audio_files(paths: Sequence[Path], exclude: Path) -> list[Path]:
    """Files named in ``paths``, and the audio files in folders among them (searched recursively).

    Files inside ``exclude`` (the word's own folder) are left out, so a clip is never imported into itself.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise AudioError(f"{path} does not exist: give --from audio files or folders that hold them")
    own = exclude.resolve()
    found = [p for p in found if own not in p.resolve().parents]
    if not found:
        raise AudioError(f"no audio files in {', '.join(map(str, paths))}: --from takes "
                         f"{', '.join(sorted(AUDIO_SUFFIXES))} files")
    return found


def import_files(files: Sequence[Path], settings: RecordSettings, console: Console, tally: Tally) -> None:
    """Each file as one take (not split): trimmed, checked, and kept or rejected like a take."""
    from kws.audio_file import read_audio

    have = len(existing_clips(settings.folder))
    if have:
        console.say(f"{_clips(have)} already in {settings.folder}; importing {len(files)} file(s) after them")
    for path in files:
        try:
            audio = read_audio(path, SAMPLE_RATE_HZ)
        except AudioError as error:
            tally.rejected["unreadable"] += 1
            console.say(f"skipped: {error}")
            continue
        result = check_take(audio, settings.checks, whole_file=True)
        if result.accepted:
            tally.accepted += 1
            console.say(f"{path} kept: {result.message} -> {save_clip(settings.folder, result.trimmed)}")
        else:
            tally.rejected[result.reason] += 1
            console.say(f"{path} rejected: {result.message}")


def record(settings: RecordSettings, console: Console, sources: Sequence[Path] = ()) -> int:
    """Record (or import ``sources``) into ``settings.folder``; returns 0 when done, 130 when interrupted.

    Ctrl-C keeps every clip written so far; the summary is printed either way.
    """
    files = find_audio_files(sources, settings.folder) if sources else None
    prepare_folder(settings.folder)
    tally = Tally()
    status = 0
    try:
        if files is None:
            record_takes(settings, console, tally)
        else:
            import_files(files, settings, console, tally)
    except KeyboardInterrupt:
        console.say("interrupted; the clips written so far are kept")
        status = 130
    except KwsError:
        if tally.attempts:  # say what was kept before the microphone (or the disk) failed
            for line in summary(tally, settings.folder):
                console.say(line)
        raise
    for line in summary(tally, settings.folder):
        console.say(line)
    return status
