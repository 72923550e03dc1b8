"""``kws record``: the take checks on real speech, and the command on a real (virtual) microphone and real files.

``check_take`` is tested directly on real Speech Commands clips in noise, and on clipped,
quiet, short, long and cut-off takes made from them. The command runs in a subprocess:
recording from the monitor of a private PulseAudio null sink while real words play into
it (see ``test_listen``), stopped by SIGINT, and importing a folder of real files.
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from conftest import KEYWORD_CLIPS, SAMPLE_RATE_HZ, read_clip, run_kws
from test_listen import SINK, Listener, pulse  # noqa: F401  (pulse: the PulseAudio fixture, used by name)
from virtual_audio import to_int16, write_wav

from kws.record import Console, RecordSettings, TakeChecks, capture_take, check_take, frame_levels_dbfs

CHECKS = TakeChecks()
NOISE_RMS = 0.003
"""Background noise of the synthetic takes: -50 dBFS, a quiet room."""
WORDS = {word: relative for word, relative in KEYWORD_CLIPS}
COMPUTER = "wakewords/computer"
"""Real recordings of a custom wake word (3 s each, the word somewhere inside)."""
REASON_LINE = re.compile(r"^take (\d+) rejected: (clipped|too quiet|too short|too long|cut off) \(.+\)$")


# --------------------------------------------------------------------------- helpers


def noise(seconds: float, rms: float = NOISE_RMS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, rms, round(seconds * SAMPLE_RATE_HZ)).astype(np.float32)


def in_take(speech: np.ndarray, before_s: float = 0.5, after_s: float = 0.5, rms: float = NOISE_RMS) -> np.ndarray:
    """A take window: ``speech`` with background noise before, under and after it."""
    audio = np.concatenate([np.zeros(round(before_s * SAMPLE_RATE_HZ), np.float32), speech,
                            np.zeros(round(after_s * SAMPLE_RATE_HZ), np.float32)])
    return audio + noise(audio.size / SAMPLE_RATE_HZ, rms, seed=1)


def core(clip: np.ndarray, within_db: float = 20.0) -> np.ndarray:
    """The loud part of a clip: first to last 10 ms frame within ``within_db`` of its loudest frame."""
    levels = frame_levels_dbfs(clip, 160)
    loud = np.flatnonzero(levels >= levels.max() - within_db)
    return clip[loud[0] * 160 : (loud[-1] + 1) * 160]


def peak_dbfs(audio: np.ndarray) -> float:
    return float(frame_levels_dbfs(audio, 160).max())


class Recorder(Listener):
    """``kws record ARGS`` in a subprocess, its output lines collected as they come (``Listener``'s machinery)."""

    def __init__(self, args: list[str], env: dict | None):
        super().__init__(args, env, command="record")


class Player:
    """``paplay`` of a wav into the sink in the background, stopped on exit."""

    def __init__(self, wav: Path, env: dict):
        self.process = subprocess.Popen(["paplay", f"--device={SINK}", str(wav)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "Player":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="module")
def words_wav(shared_data, tmp_path_factory):
    """A minute of the four real keyword clips, each between 2 s of quiet noise, and its int16 samples.

    Any take window of 1.5 s falls on silence, on part of a word, or on a whole word,
    so a recorder on the monitor keeps some takes and rejects others whatever its timing.
    """
    parts = []
    for _ in range(5):
        for _, relative in KEYWORD_CLIPS:
            parts += [np.zeros(2 * SAMPLE_RATE_HZ, np.float32), read_clip(relative)]
    audio = np.concatenate(parts)
    pcm = to_int16(audio + noise(audio.size / SAMPLE_RATE_HZ, seed=2))
    return write_wav(tmp_path_factory.mktemp("words") / "words.wav", pcm, SAMPLE_RATE_HZ), pcm


def locate(haystack: np.ndarray, needle: np.ndarray) -> int | None:
    """Where ``needle`` occurs in ``haystack`` sample for sample, or None."""
    middle = needle.size // 2
    hits = np.flatnonzero(np.all(sliding_window_view(haystack, 16) == needle[middle : middle + 16], axis=1))
    return next((int(s) for s in hits - middle if s >= 0 and np.array_equal(haystack[s : s + needle.size], needle)), None)


def assert_played(clip: Path, pcm: np.ndarray) -> None:
    """``clip`` holds exactly a stretch of the played samples: recorded as played, only trimmed."""
    samples, _ = sf.read(str(clip), dtype="int16")
    assert locate(pcm, samples) is not None, f"{clip} is not in the playback"


def check_clip_format(path: Path, longest_s: float) -> float:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE_HZ, 1, "PCM_16", "WAV"), info
    assert CHECKS.min_voiced_s + 2 * CHECKS.margin_s <= info.duration < longest_s, (path, info.duration)
    return info.duration


# --------------------------------------------------------------------------- check_take on real speech


@pytest.mark.parametrize("word", list(WORDS))
@pytest.mark.parametrize("background_rms", [NOISE_RMS, 0.0])
def test_real_word_is_kept_and_trimmed(shared_data, word, background_rms):
    clip = read_clip(WORDS[word])
    take = in_take(clip, 0.5, 0.5, background_rms)
    before = take.copy()
    result = check_take(take, CHECKS)
    assert result.accepted and result.reason is None, result.message
    assert np.array_equal(take, before), "check_take changed its input"
    # Trimmed: a stretch of the take, shorter than it, holding (nearly) all its energy: the word.
    trimmed = result.trimmed
    assert trimmed.size < take.size - 0.5 * SAMPLE_RATE_HZ
    assert locate(take, trimmed) is not None
    assert np.sum(trimmed.astype(np.float64) ** 2) >= 0.97 * np.sum(take.astype(np.float64) ** 2)
    # The margins: speech plus 0.1 s each side.
    assert trimmed.size == pytest.approx((result.voiced_s + 2 * CHECKS.margin_s) * SAMPLE_RATE_HZ, abs=1)
    assert CHECKS.min_voiced_s <= result.voiced_s <= 1.0
    assert result.peak_dbfs == pytest.approx(peak_dbfs(clip), abs=1.0)


def test_real_word_trimming_is_tight_in_noise(shared_data):
    """In a noisy room the trimmed clip is the word: 'go' (about 0.5 s of speech) comes out under 0.75 s."""
    result = check_take(in_take(read_clip(WORDS["go"]), 0.7, 0.7), CHECKS)
    assert result.accepted
    assert 0.35 <= result.voiced_s <= 0.55 and result.trimmed.size / SAMPLE_RATE_HZ <= 0.75


@pytest.mark.parametrize("word", ["yes", "go"])
def test_clipped_take_is_rejected(shared_data, word):
    loud = np.clip(read_clip(WORDS[word]) * 8, -1, 1)
    result = check_take(in_take(loud), CHECKS)
    assert (result.accepted, result.reason) == (False, "clipped")
    assert re.fullmatch(r"\d+ samples at full scale; move back or lower the input gain", result.detail)


def test_a_few_full_scale_samples_are_not_clipping(shared_data):
    take = in_take(read_clip(WORDS["go"]))
    take[[5000, 9000, 12000]] = 1.0
    assert check_take(take, CHECKS).accepted


@pytest.mark.parametrize("word", ["stop", "off"])
def test_quiet_take_is_rejected(shared_data, word):
    clip = read_clip(WORDS[word])
    quiet = clip * np.float32(10 ** ((-48 - peak_dbfs(clip)) / 20))  # its loudest 10 ms at -48 dBFS
    result = check_take(in_take(quiet, rms=0.0003), CHECKS)
    assert (result.accepted, result.reason) == (False, "too quiet")
    assert result.message == "too quiet (-48 dBFS peak; move closer or raise the input gain)"


def test_silence_and_steady_noise_are_too_quiet():
    assert check_take(np.zeros(2 * SAMPLE_RATE_HZ, np.float32), CHECKS).message.startswith("too quiet (-100 dBFS peak")
    assert check_take(noise(2.0), CHECKS).reason == "too quiet"
    fan = check_take(noise(2.0, rms=0.05), CHECKS)  # loud enough, but nothing stands out of it
    assert fan.reason == "too quiet" and "above the background" in fan.detail, fan.message


def test_short_sound_is_rejected(shared_data):
    clip = read_clip(WORDS["go"])
    loudest = int(np.argmax(frame_levels_dbfs(clip, 160)))
    blip = clip[(loudest - 4) * 160 : (loudest + 4) * 160]  # 80 ms of the vowel
    result = check_take(in_take(blip), CHECKS)
    assert (result.accepted, result.reason) == (False, "too short")
    assert re.fullmatch(r"0\.\d\d s of speech; say the whole word", result.detail)
    assert result.voiced_s < CHECKS.min_voiced_s


@pytest.mark.parametrize("word", list(WORDS))
def test_speech_touching_the_take_window_is_cut_off(shared_data, word):
    """The word cut at its loudest 10 ms: the window began too late, or ended too early."""
    clip = read_clip(WORDS[word])
    loudest = int(np.argmax(frame_levels_dbfs(clip, 160)))
    tail, head = clip[loudest * 160 :], clip[: (loudest + 1) * 160]
    early = check_take(in_take(tail, 0.0, 1.0), CHECKS)
    assert (early.reason, early.detail.split(";")[0]) == ("cut off", "started before the countdown ended")
    late = check_take(in_take(head, 1.0, 0.0), CHECKS)
    assert (late.reason, late.detail.split(";")[0]) == ("cut off", "still speaking when the take ended")
    # A file is not a window: a word may touch its ends.
    speech = core(clip)
    for audio in (in_take(speech, 0.0, 1.0), in_take(speech, 1.0, 0.0)):
        whole = check_take(audio, CHECKS, whole_file=True)
        assert whole.accepted, whole.message
        assert whole.trimmed.size < audio.size - 0.5 * SAMPLE_RATE_HZ


def words_back_to_back(seconds: float) -> np.ndarray:
    """Real words ('go', 'off', ...) with 50 ms pauses, cut to ``seconds``, ending on speech."""
    cores = [core(read_clip(WORDS[w])) for w in ("go", "off")]
    parts, size = [], 0
    while size < seconds * SAMPLE_RATE_HZ:
        for part in (cores[len(parts) // 2 % 2], np.zeros(800, np.float32)):
            parts.append(part)
            size += part.size
    return np.concatenate(parts)[: round(seconds * SAMPLE_RATE_HZ) - 800]


def test_long_speech_is_rejected(shared_data):
    result = check_take(in_take(words_back_to_back(2.3), 0.5, 0.5), CHECKS)
    assert (result.accepted, result.reason) == (False, "too long")
    assert result.voiced_s > CHECKS.max_voiced_s
    assert check_take(in_take(words_back_to_back(2.3)), CHECKS, whole_file=True).reason == "too long"


def test_take_window_limits_speech_to_its_length_minus_margins(shared_data):
    """1.25 s of speech in a 1.4 s window cannot have its 0.1 s margins: too long; fine as a file."""
    take = in_take(words_back_to_back(1.3), 0.075, 0.075)
    longest_s = take.size / SAMPLE_RATE_HZ - 2 * CHECKS.margin_s
    result = check_take(take, CHECKS)
    assert result.reason == "too long" and result.voiced_s > longest_s, result.message
    assert f"at most {longest_s:.2f} s" in result.detail
    assert check_take(take, CHECKS, whole_file=True).accepted


def test_check_take_is_pure_and_repeatable(shared_data):
    take = in_take(read_clip(WORDS["stop"]))
    first, second = check_take(take, CHECKS), check_take(take.copy(), CHECKS)
    assert (first.accepted, first.reason, first.voiced_s) == (second.accepted, second.reason, second.voiced_s)
    assert np.array_equal(first.trimmed, second.trimmed)
    first.trimmed[:] = 0
    assert np.any(take), "the trimmed audio must be a copy"


# --------------------------------------------------------------------------- countdown, capture and meter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_capture_takes_the_audio_after_the_countdown_and_meters_it(shared_data):
    """Chunks as the microphone gives them: the take is exactly the take_s after countdown_s."""
    stream = np.concatenate([noise(1.0), read_clip(WORDS["yes"]), noise(1.0)])
    chunks = (stream[i : i + 320] for i in range(0, stream.size, 320))  # 20 ms blocks
    settings = RecordSettings(word="yes", take_s=2.0, countdown_s=1.0)
    terminal = Terminal()
    take = capture_take(chunks, settings, Console(terminal))
    assert np.array_equal(take, stream[SAMPLE_RATE_HZ : 3 * SAMPLE_RATE_HZ])
    shown = terminal.getvalue()
    assert shown.startswith("  1... speak now\n"), shown[:40]
    meters = re.findall(r"\r  \[([#-]{30})\] +(-?\d+\.\d) dBFS", shown)
    assert 19 <= len(meters) <= 21  # 10 a second
    levels = [float(level) for _, level in meters]
    assert max(levels) > -25 and min(levels) < -45  # the word, and the quiet around it
    assert all(abs(bar.count("#") - 30 * max(0, 1 + level / 60)) <= 1 for (bar, level) in zip([b for b, _ in meters], levels))


def test_no_meter_unless_a_terminal(shared_data):
    stream = noise(3.0)
    pipe = io.StringIO()
    console = Console(pipe)
    capture_take((stream[i : i + 320] for i in range(0, stream.size, 320)),
                 RecordSettings(word="yes", take_s=1.0, countdown_s=2.0), console)
    console.say("take 1 rejected: too quiet")
    assert pipe.getvalue() == "  2... 1... speak now\ntake 1 rejected: too quiet\n"


def test_console_erases_the_meter_before_a_line():
    terminal = Terminal()
    console = Console(terminal)
    console.meter(-20.0)
    console.say("take 3 kept")
    text = terminal.getvalue()
    meter = "  [" + "#" * 20 + "-" * 10 + "]  -20.0 dBFS"
    assert text == "\r" + meter + "\r" + " " * len(meter) + "\r" + "take 3 kept\n"


# --------------------------------------------------------------------------- kws record on a live microphone


def test_record_from_microphone(pulse, words_wav, tmp_path):
    """Two takes kept from real words played into the microphone; silence and partial words rejected with reasons."""
    wav, pcm = words_wav
    out = tmp_path / "recordings"
    args = ["--word", "yes", "--count", "2", "--take-s", "1.5", "--countdown-s", "0", "--out", str(out),
            "--device", "pulse"]
    with Recorder(args, pulse.env) as recorder:
        recorder.wait_for_log(r"^take 1/2: say 'yes' now$")
        # Nothing plays yet: the microphone hears digital silence.
        recorder.wait_for_log(r"^take 1 rejected: too quiet \(-100 dBFS peak; move closer or raise the input gain\)$")
        with Player(wav, pulse.env):
            code = recorder.wait(timeout=120)
    stderr = recorder.stderr
    assert code == 0, "\n".join(stderr)
    assert not any("Traceback" in line or "\r" in line for line in stderr), "\n".join(stderr)
    assert recorder.stdout == []

    clips = sorted((out / "yes").iterdir())
    assert [p.name for p in clips] == ["0001.wav", "0002.wav"]
    durations = [check_clip_format(p, longest_s=1.5) for p in clips]
    for clip in clips:
        assert peak_dbfs(sf.read(str(clip), dtype="float32")[0]) > -30
        assert_played(clip, pcm)

    kept = [line for line in stderr if re.fullmatch(r"take \d kept: \d\.\d\d s -> .*/yes/000\d\.wav", line)]
    assert [line.split()[1] for line in kept] == ["1", "2"] and kept[0].endswith("/yes/0001.wav")
    rejected = [line for line in stderr if " rejected: " in line]
    assert rejected and all(REASON_LINE.match(line) for line in rejected), rejected
    reasons = {}
    for line in rejected:
        reason = REASON_LINE.match(line).group(2)
        reasons[reason] = reasons.get(reason, 0) + 1
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    summary = next(line for line in stderr if line.startswith("accepted "))
    assert summary.startswith(f"accepted 2, rejected {len(rejected)} (") and reasons["too quiet"] >= 1, summary
    assert sorted(summary[summary.index("(") + 1 : -1].split(", ")) == sorted(counts.split(", "))
    assert stderr[-1] == f"2 clips now in {out / 'yes'}, median duration {np.median(durations):.2f} s"


def test_ctrl_c_keeps_the_clips_written_so_far(pulse, words_wav, tmp_path):
    wav, pcm = words_wav
    out = tmp_path / "recordings"
    args = ["--word", "go", "--count", "50", "--take-s", "1.5", "--countdown-s", "0.5", "--out", str(out),
            "--device", "pulse"]
    with Recorder(args, pulse.env) as recorder, Player(wav, pulse.env):
        recorder.wait_for_log(r"^take 1 kept: ", timeout=90)
        recorder.process.send_signal(signal.SIGINT)
        code = recorder.wait(timeout=20)
    stderr = recorder.stderr
    assert code == 130, "\n".join(stderr)
    assert not any("Traceback" in line for line in stderr), "\n".join(stderr)
    assert "  0... " not in "\n".join(stderr) and any(line.startswith("  1... speak now") for line in stderr)
    kept = [line for line in stderr if re.match(r"take \d+ kept: ", line)]
    folder = out / "go"
    assert sorted(p.name for p in folder.iterdir()) == [f"{n:04d}.wav" for n in range(1, len(kept) + 1)]  # no temp files
    for clip in folder.iterdir():
        check_clip_format(clip, longest_s=1.5)
        assert_played(clip, pcm)
    assert "interrupted; the clips written so far are kept" in stderr
    assert re.fullmatch(rf"accepted {len(kept)}, rejected \d+( \(.+\))?", stderr[-2]), stderr[-2:]
    clips = f"{len(kept)} clip" + ("s" if len(kept) > 1 else "")
    assert stderr[-1].startswith(f"{clips} now in {folder}, median duration ")

    # Run again: it resumes; with the count reached there is nothing to record (and no microphone needed).
    again = run_kws("record", "--word", "go", "--count", str(len(kept)), "--out", str(out), env=pulse.env, timeout=60)
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode().splitlines()[0] == f"{clips} already in {folder}; nothing to record"


def test_record_unknown_device_is_one_line_error(pulse, tmp_path):
    result = run_kws("record", "--word", "yes", "--out", str(tmp_path), "--device", "no-such-mic", env=pulse.env,
                     timeout=60)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == ["kws: error: no input device matches 'no-such-mic': "
                                                   "see `kws devices`"]


# --------------------------------------------------------------------------- kws record --from


@pytest.fixture
def import_folder(shared_data, tmp_path):
    """Real recordings of 'computer' (ogg, one resampled to a 48 kHz wav, one in a subfolder), a quiet one,
    a corrupt file and a text file."""
    folder = tmp_path / "takes"
    (folder / "more").mkdir(parents=True)
    recordings = sorted((shared_data / COMPUTER).iterdir())[:4]
    shutil.copy(recordings[0], folder / "a.ogg")
    shutil.copy(recordings[1], folder / "more" / "b.ogg")
    audio, rate = sf.read(str(recordings[2]), dtype="float32")
    from scipy.signal import resample_poly

    sf.write(str(folder / "c48k.wav"), resample_poly(audio, 3, 1), 48000, subtype="PCM_16")
    audio, _ = sf.read(str(recordings[3]), dtype="float32")
    sf.write(str(folder / "d_quiet.flac"), audio * np.float32(10 ** ((-55 - peak_dbfs(audio)) / 20)), rate)
    (folder / "e_corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(200)))
    (folder / "notes.txt").write_text("not audio\n")
    return folder


def test_import_from_files(import_folder, tmp_path):
    out = tmp_path / "recordings"
    first = run_kws("record", "--word", "computer", "--out", str(out), "--from", str(import_folder), timeout=120)
    lines = first.stderr.decode().splitlines()
    assert first.returncode == 0, lines
    folder = out / "computer"
    assert sorted(p.name for p in folder.iterdir()) == ["0001.wav", "0002.wav", "0003.wav"]
    for clip in folder.iterdir():
        check_clip_format(clip, longest_s=1.8)  # trimmed out of 3 s recordings
    assert lines[0] == f"{import_folder / 'a.ogg'} kept: " + lines[0].split("kept: ")[1]
    assert re.fullmatch(rf"{re.escape(str(import_folder / 'c48k.wav'))} kept: \d\.\d\d s -> {re.escape(str(folder))}/0002\.wav",
                        lines[1]), lines
    assert lines[2].startswith(f"{import_folder / 'd_quiet.flac'} rejected: too quiet (-55 dBFS peak;"), lines
    assert lines[3].startswith(f"skipped: cannot read audio file {import_folder / 'e_corrupt.wav'}: "), lines
    assert lines[4].startswith(f"{import_folder / 'more' / 'b.ogg'} kept: ") and lines[4].endswith("/0003.wav")
    assert lines[5] == "accepted 3, rejected 2 (too quiet 1, unreadable 1)"
    assert re.fullmatch(rf"3 clips now in {re.escape(str(folder))}, median duration 0\.\d\d s", lines[6])
    assert len(lines) == 7 and first.stdout == b""

    # Resumable: a second import numbers on; a file given by name is imported whatever its suffix.
    renamed = shutil.copy(import_folder / "a.ogg", tmp_path / "take.audio")
    second = run_kws("record", "--word", "computer", "--out", str(out), "--from", str(import_folder / "more"),
                     str(renamed), timeout=120)
    lines = second.stderr.decode().splitlines()
    assert second.returncode == 0, lines
    assert lines[0] == f"3 clips already in {folder}; importing 2 file(s) after them"
    assert lines[1].endswith("/0004.wav") and lines[2].endswith("/0005.wav"), lines
    assert lines[-2] == "accepted 2, rejected 0"
    assert sorted(p.name for p in folder.iterdir()) == [f"{n:04d}.wav" for n in range(1, 6)]
    assert np.array_equal(sf.read(str(folder / "0001.wav"))[0], sf.read(str(folder / "0005.wav"))[0])


@pytest.mark.parametrize("args, message", [
    (["--from", "{tmp}/missing"], "kws: error: {tmp}/missing does not exist: give --from audio files or folders that hold them"),
    (["--from", "{tmp}/empty"], "kws: error: no audio files in {tmp}/empty: --from takes "),
    (["--out", "{tmp}/file.txt"], "kws: error: cannot create folder {tmp}/file.txt/yes: Not a directory; give another --out"),
    (["--word", "a/b"], "kws: error: --word 'a/b' cannot be a folder name: give the word itself, e.g. --word computer"),
    (["--take-s", "0.3"], "kws: error: --take-s 0.3 is too short: a take needs more than 0.35 s"),
    (["--count", "0"], "kws: error: --count 0: give the number of clips wanted, at least 1"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    options = ["--word", "yes", "--out", str(tmp_path / "out"), *args]
    result = run_kws("record", *options, timeout=60)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(message.format(tmp=tmp_path)), lines
    assert not (tmp_path / "out").exists()


def test_file_padded_with_digital_silence_is_trimmed_to_its_word(shared_data):
    """Files often begin and end with digital zeros: they are not the room's floor, so the
    background between them and the word is not taken for speech."""
    word = core(read_clip(WORDS["stop"]))
    background = 0.006  # -44 dBFS room noise, the level of many real wake-word recordings
    middle = np.concatenate([np.zeros(8000, np.float32), word, np.zeros(8000, np.float32)])
    middle = middle + noise(middle.size / SAMPLE_RATE_HZ, background, seed=2)
    padded = np.concatenate([np.zeros(16000, np.float32), middle, np.zeros(16000, np.float32)])
    result = check_take(padded, CHECKS, whole_file=True)
    word_s = word.size / SAMPLE_RATE_HZ
    assert result.accepted, result.message
    assert result.voiced_s <= word_s + 0.1, (result.voiced_s, word_s)
    assert result.speech_centre_s == pytest.approx(1.5 + word_s / 2, abs=0.1)


def test_file_keeps_its_loudest_utterance_not_a_click_or_a_later_word(shared_data):
    """A click before the word and a quieter word after it: the file's word is the one with the most energy."""
    word = core(read_clip(WORDS["stop"]))
    quieter = core(read_clip(WORDS["go"])) * 0.3
    click = np.zeros(16000, np.float32)
    click[3200:3280] = 0.9  # 5 ms at nearly full scale, 0.8 s before the word
    audio = in_take(np.concatenate([click, word, np.zeros(12000, np.float32), quieter]), 0.3, 0.3)
    result = check_take(audio, CHECKS, whole_file=True)
    word_start_s = 0.3 + click.size / SAMPLE_RATE_HZ
    assert result.accepted, result.message
    assert result.speech_centre_s == pytest.approx(word_start_s + word.size / SAMPLE_RATE_HZ / 2, abs=0.1)
    assert result.voiced_s <= word.size / SAMPLE_RATE_HZ + 0.1
    as_take = check_take(audio, CHECKS)  # a take keeps all of it: speech before or after the word is its problem
    assert as_take.voiced_s > result.voiced_s + 0.5
