"""Tests of training/synth.py: synthetic keyword clips from the installed TTS engines."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    from training import synth
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training import synth


CLIPS_PER_ENGINE = 2


@pytest.fixture(scope="module")
def engines() -> tuple[str, ...]:
    found = synth.available_engines()
    if not found:
        pytest.skip("no TTS engine installed (apt-get install espeak-ng flite festival)")
    return found


def _settings(out_dir: Path, engines: tuple[str, ...]) -> synth.SynthSettings:
    return synth.SynthSettings(
        words=("on",),
        out_dir=out_dir,
        engines=engines,
        clips_per_word=CLIPS_PER_ENGINE * len(engines),
        seed=123,
    )


def test_synthesize_writes_clips_and_caches(tmp_path: Path, engines: tuple[str, ...]) -> None:
    settings = _settings(tmp_path / "synth", engines)
    paths = synth.synthesize(settings)

    # Speech Commands layout: <out_dir>/<word>/*.wav, nothing else left behind.
    assert paths, "no clip was synthesised"
    word_dir = settings.out_dir / "on"
    assert sorted(paths) == sorted(word_dir.iterdir())
    per_engine = {e: sum(p.name.startswith(e + "_") for p in paths) for e in engines}
    # A rare rejection (too long / silent) may cost a clip, but every engine must deliver.
    assert all(1 <= n <= CLIPS_PER_ENGINE for n in per_engine.values()), per_engine

    clip_len = int(round(settings.clip_s * settings.sample_rate_hz))
    for path in paths:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", clip_len), path
        audio, _ = sf.read(str(path), dtype="int16")
        peak = int(np.max(np.abs(audio)))
        assert 0.09 * 32767 <= peak <= 0.91 * 32767, (path, peak)
        voiced = np.flatnonzero(np.abs(audio) > 0.01 * peak)
        word_s = (voiced[-1] - voiced[0]) / settings.sample_rate_hz
        assert 0.05 <= word_s <= settings.clip_s, (path, word_s)

    # Same settings again: same paths, nothing re-rendered.
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    again = synth.synthesize(settings)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in again} == mtimes


def test_job_list_is_deterministic(tmp_path: Path, engines: tuple[str, ...]) -> None:
    first = synth.synthesize(_settings(tmp_path / "a", engines[:1]))
    second = synth.synthesize(_settings(tmp_path / "b", engines[:1]))
    assert [p.name for p in first] == [p.name for p in second]


def test_unknown_engine_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown TTS engine.*'espeak'.*known engines: espeak-ng"):
        synth.SynthSettings(words=("on",), out_dir=tmp_path, engines=("espeak",))


def test_missing_engine_is_skipped_with_one_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(synth._Flite, "available", lambda self: False)
    settings = synth.SynthSettings(words=("on",), out_dir=tmp_path, engines=("flite",), clips_per_word=3)
    with caplog.at_level("WARNING", logger=synth.__name__):
        assert synth.synthesize(settings) == []
    flite_warnings = [r for r in caplog.records if "flite not found" in r.getMessage()]
    assert len(flite_warnings) == 1
    assert "apt-get install flite" in flite_warnings[0].getMessage()


def test_running_speech_is_read_by_each_engine_in_turn_and_cached(tmp_path: Path, engines: tuple[str, ...]) -> None:
    texts = [f"the {n} quiet rivers ran along the old stone wall" for n in ("two", "three", "four", "five")]
    texts = texts[: max(2, len(engines))]
    read = synth.render_speech(texts, tmp_path, engines, seed=4)
    assert [text for text, _ in read] == texts
    first = [audio for _, audio in read]
    files = sorted(tmp_path.glob("*.wav"))
    assert len(first) == len(texts) == len(files)
    assert {f.name.split("_")[0] for f in files} == set(engines[: len(texts)])
    for audio in first:
        assert audio.dtype == np.float32 and audio.size > 1.5 * 16000  # a sentence, not a word
        assert 0.19 < np.abs(audio).max() < 0.91  # a random level
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = synth.render_speech(texts, tmp_path, engines, seed=4)
    assert {f: f.stat().st_mtime_ns for f in sorted(tmp_path.glob("*.wav"))} == stamps  # nothing rendered again
    assert all(np.array_equal(a, b) for a, (_, b) in zip(first, again))


def test_the_train_extra_brings_the_piper_voice(tmp_path: Path) -> None:
    """``pip install '.[train]'`` installs piper and its voice, so ``kws-train custom --synth`` has a neural voice."""
    pytest.importorskip("tensorflow", reason="without the [train] extra")
    assert "piper" in synth.available_engines()
    settings = synth.SynthSettings(words=("computer",), out_dir=tmp_path, engines=("piper",), clips_per_word=3, seed=1)
    paths = synth.synthesize(settings)
    assert len(paths) == 3 and all(p.name.startswith("piper_en_US-joe-medium_") for p in paths)
    for path in paths:
        audio, rate = sf.read(str(path), dtype="float32")
        assert rate == 16000 and audio.size == int(round(settings.clip_s * rate))
        assert 0.09 <= np.abs(audio).max() <= 0.91
