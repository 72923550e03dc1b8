"""Several models at once, and saving the audio around detections; real bundles, real interpreter, no mocks.

Second and third models are copies of the bundled ``kws12``: ``kws12b`` is the same
model under another name (same feature settings, so it shares the front end), and
``kws12fft`` has a different FFT size (valid, same input shape), so it needs its own.
"""

from __future__ import annotations

import json
import shutil
import sys
import wave
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import DEFAULT_MODEL, SAMPLE_RATE_HZ, keyword_stream, one_error_line, run_kws
from kws.bundle import load_bundle
from kws.capture import CaptureSettings, ClipCollector
from kws.spotter import KeywordSpotter, ModelHead, MultiSpotter, detector_settings_for

PY = sys.executable
PRE_S, POST_S = 1.5, 0.5
APPEND_HOOK = "import os, sys; open(sys.argv[1], 'a').write(os.environ['KWS_MODEL'] + ' ' + os.environ['KWS_KEYWORD'] + ' ' + sys.argv[2] + '\\n')"


def copy_bundle(directory: Path, name: str, **features) -> Path:
    """``kws12`` under another name (and, given ``features``, other feature settings)."""
    manifest = json.loads(DEFAULT_MODEL.read_text())
    manifest["name"], manifest["tflite"] = name, f"{name}.tflite"
    manifest["features"].update(features)
    shutil.copy(DEFAULT_MODEL.with_suffix(".tflite"), directory / f"{name}.tflite")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    return {"kws12": DEFAULT_MODEL, "kws12b": copy_bundle(directory, "kws12b"),
            "kws12fft": copy_bundle(directory, "kws12fft", n_fft=1024)}


@pytest.fixture(scope="module")
def stream(tmp_path_factory, shared_data):
    """The keyword stream as a 16-bit wav, its int16 samples, and its (word, start_s, end_s) events."""
    audio, events = keyword_stream()
    path = tmp_path_factory.mktemp("stream") / "stream.wav"
    sf.write(path, audio, SAMPLE_RATE_HZ, subtype="PCM_16")
    pcm, _ = sf.read(path, dtype="int16")
    return path, pcm, events


def detect(*args: str) -> list[dict]:
    result = run_kws("detect", *args, "--json")
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def strip(rows: list[dict]) -> list[tuple]:
    return [(r["keyword"], r["offset_s"], r["score"]) for r in rows]




def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- several models


def test_two_copies_give_the_same_detections_as_one_each_tagged(stream, models):
    path, _, events = stream
    one = detect(str(path))
    assert [r["keyword"] for r in one] == [word for word, _, _ in events]
    both = detect(str(path), "--model", "kws12", "--model", str(models["kws12b"]))
    assert {r["model"] for r in both} == {"kws12", "kws12b"}
    assert strip([r for r in both if r["model"] == "kws12"]) == strip(one)
    assert strip([r for r in both if r["model"] == "kws12b"]) == strip(one)
    assert [r["offset_s"] for r in both] == sorted(r["offset_s"] for r in both)

    text = run_kws("detect", str(path), "--model", "kws12", "--model", str(models["kws12b"]))
    assert text.returncode == 0
    lines = text.stdout.decode().splitlines()
    assert len(lines) == 8 and {line.split()[-1] for line in lines} == {"kws12", "kws12b"}
    # one model: the text output is as it always was, no model column
    first = one[0]
    offset, unit, keyword, score = run_kws("detect", str(path)).stdout.decode().splitlines()[0].split()
    assert (offset, unit, keyword) == (f"{first['offset_s']:.2f}", "s", first["keyword"])
    assert len(score.split(".")[1]) == 3 and abs(float(score) - first["score"]) < 0.0011


def test_equal_feature_settings_share_one_front_end(stream, models):
    path, pcm, _ = stream
    bundles = [load_bundle(models[name]) for name in ("kws12", "kws12b", "kws12fft")]
    spotter = MultiSpotter([ModelHead(b, detector_settings_for(b)) for b in bundles])
    assert [[h.name for h in fe.heads] for fe in spotter.front_ends] == [["kws12", "kws12b"], ["kws12fft"]]
    audio = pcm.astype(np.float32) / 32768
    detections = []
    for start in range(0, audio.size, 320):
        detections += spotter.feed(audio[start : start + 320])
    # each front end computed every frame of the stream once, for all of its models
    frames = bundles[0].features.frames_for(audio.size)
    assert [fe.frames_computed for fe in spotter.front_ends] == [frames, frames]
    assert [d.offset_s for d in detections] == sorted(d.offset_s for d in detections)

    alone = KeywordSpotter(bundles[0], detector_settings_for(bundles[0]))
    solo = []
    for start in range(0, audio.size, 320):
        solo += alone.feed(audio[start : start + 320])
    for name in ("kws12", "kws12b"):
        assert [(d.keyword, d.offset_s, d.score) for d in detections if d.model == name] == \
            [(d.keyword, d.offset_s, d.score) for d in solo]
    # the other front end's features differ, so its model's scores do, but it hears the words too
    assert [d.keyword for d in detections if d.model == "kws12fft"] == [d.keyword for d in solo]
    assert [d.score for d in detections if d.model == "kws12fft"] != [d.score for d in solo]

    result = run_kws("detect", str(path), "--model", "kws12", "--model", str(models["kws12b"]),
                     "--model", str(models["kws12fft"]))
    assert result.returncode == 0, result.stderr.decode()
    assert "3 models on 2 feature front end(s): kws12, kws12b; kws12fft" in result.stderr.decode()


def test_model_keyword_thresholds_apply_to_that_model_only(stream, models, tmp_path):
    path, _, _ = stream
    config = write_config(tmp_path / "kws.toml", f"""
model = ["kws12", {json.dumps(str(models["kws12b"]))}]
[thresholds]
"kws12b/stop" = 0.999   # silences stop for kws12b only
yes = 0.999             # silences yes for every model ...
"kws12/yes" = 0.5       # ... but this wins for kws12
""")
    rows = detect(str(path), "--config", str(config))
    fired = sorted((r["model"], r["keyword"]) for r in rows)
    assert fired == sorted([("kws12", "yes"), ("kws12", "stop"), ("kws12", "off"), ("kws12", "go"),
                            ("kws12b", "off"), ("kws12b", "go")])

    # --keywords filters across all models
    rows = detect(str(path), "--config", str(config), "--keywords", "stop,go")
    assert sorted((r["model"], r["keyword"]) for r in rows) == [("kws12", "go"), ("kws12", "stop"), ("kws12b", "go")]


def test_model_keyword_hooks_run_for_that_model_only(stream, models, tmp_path):
    path, _, _ = stream
    out = tmp_path / "hooks.txt"

    def hook(tag: str) -> str:
        return json.dumps([PY, "-c", APPEND_HOOK, str(out), tag])

    config = write_config(tmp_path / "kws.toml", f"""
[hooks]
max_parallel = 16  # the file is read faster than real time: all 7 hooks start at once

[hooks.commands]
"kws12b/stop" = {hook("b-stop")}
go = {hook("go")}
"kws12/go" = {hook("a-go")}
"kws12b/*" = {hook("b-any")}
""")
    result = run_kws("listen", "--input", str(path), "--config", str(config),
                     "--model", "kws12", "--model", str(models["kws12b"]))
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 8
    assert sorted(out.read_text().splitlines()) == sorted([
        "kws12b stop b-stop",                 # kws12's stop runs nothing
        "kws12b go go", "kws12 go a-go",      # kws12/go wins over go for kws12 only
        "kws12b yes b-any", "kws12b stop b-any", "kws12b off b-any", "kws12b go b-any",
    ])


def test_config_model_list(stream, models, tmp_path):
    path, _, events = stream
    config = write_config(tmp_path / "kws.toml", f'model = ["kws12", {json.dumps(str(models["kws12fft"]))}]\n')
    rows = detect(str(path), "--config", str(config))
    for name in ("kws12", "kws12fft"):
        assert [r["keyword"] for r in rows if r["model"] == name] == [word for word, _, _ in events]


@pytest.mark.parametrize("models_args,config,message", [
    (["--model", "nosuchmodel"], "", "model manifest {models_dir}/nosuchmodel.json not found"),
    (["--model", "kws12", "--model", "kws12"], "", "model kws12 is given twice"),
    (["--model", "kws12", "--model", "models/kws12.json"], "", "model kws12 is given twice ({models_dir}/kws12.json)"),
    (["--model", "kws12", "--model", "{d}/samename.json"], "",
     "model kws12 is given twice ({models_dir}/kws12.json and {d}/samename.json, both named kws12)"),
    (["--model", "kws12", "--model", "{kws12b}"], '[thresholds]\n"kws99/yes" = 0.9\n',
     "thresholds names kws99/yes, but no model kws99 is loaded (loaded: kws12, kws12b)"),
    (["--model", "kws12"], '[thresholds]\n"kws12b/yes" = 0.9\n', "no model kws12b is loaded"),
    (["--model", "kws12", "--model", "{kws12b}"], '[hooks.commands]\n"kws12b/maybe" = ["true"]\n',
     "hooks.commands names kws12b/maybe, but model kws12b has no keyword maybe"),
    (["--model", "kws12", "--model", "{kws12b}"], '[thresholds]\nmaybe = 0.9\n',
     "thresholds names maybe, not keyword(s) of any loaded model"),
    (["--model", "kws12", "--model", "{kws12b}", "--keywords", "yes,maybe"], "",
     "keyword(s) maybe not in any of the models"),
    (["--config", "{d}/kws.toml"], "model = []\n", "model must be a bundle name or path, or a list of them"),
])
def test_multi_model_user_errors_are_one_line(tmp_path, models, models_args, config, message):
    manifest = json.loads(DEFAULT_MODEL.read_text())  # a copy whose name was not changed
    manifest["tflite"] = "samename.tflite"
    (tmp_path / "samename.json").write_text(json.dumps(manifest))
    shutil.copy(DEFAULT_MODEL.with_suffix(".tflite"), tmp_path / "samename.tflite")
    (tmp_path / "kws.toml").write_text(config)
    sf.write(tmp_path / "x.wav", np.zeros(16000, np.float32), SAMPLE_RATE_HZ)
    names = {"d": tmp_path, "kws12b": models["kws12b"], "models_dir": DEFAULT_MODEL.parent}
    args = [a.format(**names) for a in models_args]
    if config and "--config" not in args:
        args += ["--config", str(tmp_path / "kws.toml")]
    for command in (["detect", str(tmp_path / "x.wav")], ["listen", "--input", str(tmp_path / "x.wav")]):
        line = one_error_line(run_kws(*command, *args), "kws")
        assert message.format(**names) in line, line


# --------------------------------------------------------------------------- saving detections


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        return frames, wav.getframerate(), wav.getnchannels(), wav.getsampwidth()


def check_clips(directory: Path, stdout: str, pcm: np.ndarray, events) -> list[dict]:
    """Every detection on stdout has its clip and its line; each clip is the stream around it."""
    printed = [json.loads(line) for line in stdout.splitlines()]
    logged = [json.loads(line) for line in (directory / "detections.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "file"} for row in logged] == printed
    assert sorted(p.name for p in directory.iterdir()) == sorted([row["file"] for row in logged] + ["detections.jsonl"])
    words = {word: (start, end) for word, start, end in events}
    for row in logged:
        name = row["file"]
        assert name.endswith(f"_{row['model']}_{row['keyword']}_{row['score']:.4f}.wav"), name
        when = datetime.fromisoformat(row["time"]).astimezone(timezone.utc)  # the name starts with it in UTC
        assert name.startswith(when.strftime("%Y%m%dT%H%M%S") + f".{when.microsecond // 1000:03d}Z_"), name
        clip, rate, channels, width = read_wav(directory / name)
        assert (rate, channels, width) == (SAMPLE_RATE_HZ, 1, 2)
        at = round(row["offset_s"] * SAMPLE_RATE_HZ)
        start, end = at - round(PRE_S * SAMPLE_RATE_HZ), min(at + round(POST_S * SAMPLE_RATE_HZ), pcm.size)
        np.testing.assert_array_equal(clip, pcm[start:end])
        word_start, word_end = (round(s * SAMPLE_RATE_HZ) for s in words[row["keyword"]])
        assert start <= word_start and word_end <= end, (row, start, end)  # the whole word is in the clip
        np.testing.assert_array_equal(clip[word_start - start : word_end - start], pcm[word_start:word_end])
    return logged


def test_listen_saves_the_audio_around_each_detection(stream, tmp_path):
    path, pcm, events = stream
    directory = tmp_path / "captures" / "_unknown_"  # created, parents too
    result = run_kws("listen", "--input", str(path), "--save-detections", str(directory))
    assert result.returncode == 0, result.stderr.decode()
    logged = check_clips(directory, result.stdout.decode(), pcm, events)
    assert [row["keyword"] for row in logged] == [word for word, _, _ in events]
    for row in logged:
        assert read_wav(directory / row["file"])[0].size == 2 * SAMPLE_RATE_HZ  # 1.5 s before, 0.5 s after


def test_clip_at_the_end_of_the_stream_has_what_there_is(stream, tmp_path):
    path, pcm, events = stream
    word, _, end_s = events[-1]
    short = pcm[: round(end_s * SAMPLE_RATE_HZ)]  # the stream ends with the last word
    wav = tmp_path / "short.wav"
    sf.write(wav, short, SAMPLE_RATE_HZ, subtype="PCM_16")
    directory = tmp_path / "captures"
    result = run_kws("listen", "--input", str(wav), "--save-detections", str(directory))
    assert result.returncode == 0, result.stderr.decode()
    logged = check_clips(directory, result.stdout.decode(), short, events)
    last = logged[-1]
    assert last["keyword"] == word
    clip = read_wav(directory / last["file"])[0]
    assert clip.size < 2 * SAMPLE_RATE_HZ and clip.size == short.size - (round(last["offset_s"] * SAMPLE_RATE_HZ) - 24000)


def test_config_save_detections_with_several_models(stream, models, tmp_path):
    path, pcm, events = stream
    config = write_config(tmp_path / "kws.toml", f'model = ["kws12", {json.dumps(str(models["kws12b"]))}]\n'
                                                 'save_detections = "captures"   # beside this file\n')
    result = run_kws("listen", "--input", str(path), "--config", str(config))
    assert result.returncode == 0, result.stderr.decode()
    logged = check_clips(tmp_path / "captures", result.stdout.decode(), pcm, events)
    assert sorted(row["model"] for row in logged) == ["kws12"] * 4 + ["kws12b"] * 4
    assert len({row["file"] for row in logged}) == 8


def test_collector_gives_the_same_clips_whatever_the_chunk_size(stream):
    _, pcm, events = stream
    audio = pcm.astype(np.float32) / 32768
    bundle = load_bundle(DEFAULT_MODEL)
    results = []
    for sizes in ((37,), (320,), (1, 5000, 48000, 3)):  # odd, microphone-like, and larger than the ring
        spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
        collector = ClipCollector(CaptureSettings(Path("unused"), SAMPLE_RATE_HZ, PRE_S, POST_S))
        clips, position, i = [], 0, 0
        while position < audio.size:
            chunk = audio[position : position + sizes[i % len(sizes)]]
            position, i = position + chunk.size, i + 1
            clips += collector.feed(chunk, spotter.feed(chunk))
        clips += collector.finish()
        results.append([(c.detection.keyword, c.detection.offset_s, c.start_s, c.audio.tobytes()) for c in clips])
        assert [c.detection.keyword for c in clips] == [word for word, _, _ in events]
        for clip in clips:
            start = round(clip.start_s * SAMPLE_RATE_HZ)
            assert start == round((clip.detection.offset_s - PRE_S) * SAMPLE_RATE_HZ)
            np.testing.assert_array_equal(clip.audio, audio[start : start + 2 * SAMPLE_RATE_HZ])
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("where,why", [
    ("{d}/file.txt", "it is not a folder"),
    ("{d}/file.txt/captures", "Not a directory"),
])
def test_unwritable_capture_folder_is_one_line_error(stream, tmp_path, where, why):
    path, _, _ = stream
    (tmp_path / "file.txt").write_text("not a folder")
    directory = where.format(d=tmp_path)
    result = run_kws("listen", "--input", str(path), "--save-detections", directory)
    line = one_error_line(result, "kws")
    assert line.startswith(f"kws: error: cannot save detections in {directory}: {why}; "), line
    assert result.stdout == b""


def test_read_only_capture_folder_is_one_line_error(stream, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only folder")
    path, _, _ = stream
    directory = tmp_path / "readonly"
    directory.mkdir(mode=0o555)
    try:
        line = one_error_line(run_kws("listen", "--input", str(path), "--save-detections", str(directory)), "kws")
    finally:
        directory.chmod(0o755)
    assert f"cannot save detections in {directory}: Permission denied" in line


def test_captures_keep_everything_a_detection_depended_on():
    """The pre-roll is at least each model's window plus its smoothing span (the wake word averages over 1.2 s)."""
    kws12, computer = load_bundle(DEFAULT_MODEL), load_bundle("computer")
    assert computer.window_s + computer.smoothing_s > PRE_S > kws12.window_s + kws12.smoothing_s
    for bundles, expected in (([kws12], PRE_S), ([kws12, computer], computer.window_s + computer.smoothing_s)):
        spotter = MultiSpotter([ModelHead(b, detector_settings_for(b)) for b in bundles])
        settings = CaptureSettings.for_spotter(Path("unused"), spotter)
        assert settings.pre_roll_s == pytest.approx(expected, abs=1e-3)
        assert settings.sample_rate_hz == SAMPLE_RATE_HZ and settings.post_roll_s == POST_S
