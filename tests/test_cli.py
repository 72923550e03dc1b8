"""The kws command line on real clips: detect, classify, info, and its error messages."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import soundfile as sf

from conftest import DEFAULT_MODEL, KEYWORD_CLIPS, TEST_A, keyword_stream, run_kws


@pytest.fixture(scope="module")
def stream_wav(tmp_path_factory, shared_data):
    audio, events = keyword_stream()
    path = tmp_path_factory.mktemp("stream") / "stream.wav"
    sf.write(path, audio, 16000, subtype="PCM_16")
    return path, events


def test_detect_fires_the_right_keywords_near_the_right_times(stream_wav):
    path, events = stream_wav
    result = run_kws("detect", str(path), "--json")
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["keyword"] for r in rows] == [word for word, _, _ in events]
    for row, (word, start_s, end_s) in zip(rows, events):
        # offset_s is the end of the window that fired: after the word starts, before it leaves the window
        assert start_s < row["offset_s"] <= end_s + 1.0, (word, row)
        assert row["file"] == str(path) and row["model"] == "kws12"
        assert 0 < row["score"] <= 1
        datetime.fromisoformat(row["time"])


def test_detect_text_output_and_keyword_filter(stream_wav):
    path, events = stream_wav
    result = run_kws("detect", str(path), "--keywords", "stop")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].split()[2] == "stop"


def test_detect_same_at_a_different_file_rate(stream_wav, tmp_path):
    path, events = stream_wav
    audio, _ = sf.read(path, dtype="float32")
    import librosa

    resampled = tmp_path / "stream44k.flac"
    sf.write(resampled, librosa.resample(audio, orig_sr=16000, target_sr=44100), 44100)
    result = run_kws("detect", str(resampled), "--json")
    assert [json.loads(line)["keyword"] for line in result.stdout.decode().splitlines()] == [w for w, _, _ in events]


def test_classify_json(shared_data):
    files = [str(TEST_A / relative) for _, relative in KEYWORD_CLIPS]
    result = run_kws("classify", "--json", *files)
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["file"] for r in rows] == files
    assert [r["label"] for r in rows] == [word for word, _ in KEYWORD_CLIPS]
    for row in rows:
        assert len(row["scores"]) == 12 and abs(sum(row["scores"].values()) - 1) < 0.05
        assert row["scores"][row["label"]] == max(row["scores"].values())


def test_classify_silence_and_long_file(tmp_path):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(8000, np.float32), 16000)
    result = run_kws("classify", str(quiet))
    assert result.returncode == 0
    assert result.stdout.decode().split()[1] == "_silence_"


def test_info_json():
    result = run_kws("info", "--json")
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)
    assert info["model"] == "kws12"
    assert info["size_bytes"] == DEFAULT_MODEL.with_suffix(".tflite").stat().st_size
    assert info["backend"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert info["features"]["hop_ms"] == 20.0 and len(info["labels"]) == 12
    assert info["parameters"] > 0 and info["macs"] > 0
    assert result.stderr.decode() == ""


@pytest.mark.parametrize("make,args,message", [
    (lambda d: None, ["detect", "{d}/missing.wav"], "audio file {d}/missing.wav does not exist"),
    (lambda d: (d / "bad.wav").write_bytes(b"RIFF not really a wav"), ["detect", "{d}/bad.wav"], "cannot read audio file {d}/bad.wav"),
    (lambda d: (d / "c.toml").write_text("[hooks.commands]\nmaybe = ['x']\n"), ["detect", "{d}/x.wav", "--config", "{d}/c.toml"],
     "hooks.commands names maybe, not keyword(s) of the model"),
    (lambda d: None, ["detect", "{d}/x.wav", "--keywords", "yes,maybe"], "keyword(s) maybe not in the model"),
    (lambda d: None, ["info", "--model", "{d}/none.json"], "model manifest {d}/none.json not found"),
])
def test_user_errors_are_one_line(tmp_path, make, args, message):
    make(tmp_path)
    sf.write(tmp_path / "x.wav", np.zeros(16000, np.float32), 16000)
    result = run_kws(*[a.format(d=tmp_path) for a in args])
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("kws: error: "), lines
    assert message.format(d=tmp_path) in lines[0]
