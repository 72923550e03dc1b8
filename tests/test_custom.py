"""``kws-train custom``: a wake-word bundle from 12 real clips of "computer", with real TensorFlow, TTS and calibration.

The clips come from ../shared/data/wakewords/computer (Apache-2.0, see the LICENSE there).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kws.bundle import load_bundle
from kws.features import FeatureSettings
from training import custom
from training.stream_eval import condition_name
from training.cli import _custom_settings, build_parser
from training.synth import available_engines

from conftest import SHARED, kws_train, one_error_line, run_kws

WAKEWORDS = SHARED / "data" / "wakewords" / "computer"
LIBRISPEECH = SHARED / "data" / "librispeech_dev_clean_part"






@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data):
    """12 clips of "computer"; 3 keyword-free LibriSpeech utterances of 2 speakers under an INDEX.csv."""
    root = tmp_path_factory.mktemp("custom")
    samples = root / "computer"
    samples.mkdir()
    for path in sorted(WAKEWORDS.glob("*.ogg"))[:12]:
        shutil.copy(path, samples / path.name)
    with open(LIBRISPEECH / "INDEX.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    free = [r for r in rows if not r["keywords_in_transcript"] and 3 < float(r["duration_s"]) < 7]
    speakers = sorted({r["speaker"] for r in free})[:2]
    chosen = [r for r in free if r["speaker"] == speakers[0]][:2] + [r for r in free if r["speaker"] == speakers[1]][:1]
    libri = root / "librispeech"
    for row in chosen:
        (libri / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBRISPEECH / row["path"], libri / row["path"])
    with open(libri / "INDEX.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(chosen)
    return {"root": root, "samples": samples, "libri": libri}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_data):
    """A tiny 12-class run (one epoch) whose model.keras is the transfer base."""
    pytest.importorskip("tensorflow", reason="training needs the [train] extra")
    root, _ = tiny_data
    run = tmp_path_factory.mktemp("base") / "run"
    result = kws_train("train", str(run), "--data", str(root), "--epochs", "1", "--clips-per-class", "8")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return run


@pytest.fixture(scope="module")
def trained(base_run, inputs, tiny_data, tmp_path_factory):
    root, _ = tiny_data
    out = tmp_path_factory.mktemp("custom_run")
    run, models = out / "run", out / "models"
    config = out / "custom.toml"
    config.write_text('[custom]\nsynth_speech_s = 20\nsynthetic_rooms = 3\nwhisper_share = 0.5\n'
                      'hard_negative_share = 0.5\npartial_takes = 2\n')
    args = ["custom", str(run), "--config", str(config), "--word", "computer", "--samples", str(inputs["samples"]),
            "--speech-commands", str(root), "--negatives", str(inputs["libri"]), "--base", str(base_run),
            "--epochs", "2", "--clips-per-class", "40", "--holdout", "0.25", "--synth", "2", "--near-misses", "1",
            "--engines", "espeak-ng", "--hard-negative-epochs", "1", "--out", str(models)]
    result = kws_train(*args)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return run, models, result


def test_partial_takes_keep_a_beginning_or_an_end_of_the_speech_over_the_clips_background():
    rng = np.random.default_rng(5)
    rate = 16000
    clip = 0.001 * rng.standard_normal(rate)  # background at about -60 dBFS ...
    clip[int(0.2 * rate) : int(0.8 * rate)] += 0.3 * np.sin(np.arange(int(0.6 * rate)) * 0.2)  # ... speech at 0.2-0.8 s
    pieces = custom.partial_takes(np.stack([custom._to_int16(clip)] * 2), 3, np.random.default_rng(0))
    assert pieces.shape == (6, rate) and pieces.dtype == np.int16

    low, high = custom.PARTIAL_SPAN
    for i, piece in enumerate(pieces):  # per clip: a beginning, an end, a beginning
        frames = np.sqrt(np.mean((piece.astype(np.float64) / 32768).reshape(-1, 160) ** 2, axis=1))
        loud = np.flatnonzero(frames > 0.1) / 100  # the 10 ms frames of speech left, in seconds
        assert loud.size and np.all(np.diff(loud) < 0.015), i  # one stretch of it
        kept = (loud[-1] + 0.01 - loud[0]) / 0.6
        assert low - 0.03 <= kept <= high + 0.03, (i, kept)
        assert abs(loud[0] - 0.2) < 0.015 if i % 3 % 2 == 0 else abs(loud[-1] + 0.01 - 0.8) < 0.015, i
        times = np.arange(frames.size) / 100
        rest = frames[(times < loud[0] - 0.015) | (times > loud[-1] + 0.015)]  # beyond the crossfade
        assert rest.max() < 0.01, i  # the background
    assert not np.array_equal(pieces[0], pieces[3])  # each piece's share is drawn


def test_near_miss_texts_are_deterministic_and_never_the_word():
    texts = custom.near_miss_texts("computer")
    assert texts == custom.near_miss_texts("computer")
    assert {"compu", "puter"} <= set(texts) and "computer" not in texts
    assert any(t in custom.COMMON_WORDS for t in texts)  # curated sound-alikes
    assert len(texts) == len(set(texts)) <= 16
    phrase = custom.near_miss_texts("hey_pi")
    assert {"hey", "pi"} <= set(phrase) and "hey pi" not in phrase
    assert custom.syllables("computer") == ["com", "pu", "ter"]


def test_window_follows_the_clips_in_whole_hops():
    features = FeatureSettings()
    assert custom.choose_window_s([0.5] * 10, features) == 1.0
    assert custom.choose_window_s([1.3] * 9 + [0.4], features) == pytest.approx(1.6)
    assert custom.whole_hops(1.01, features) == pytest.approx(1.02)


def test_transfer_copies_conv_weights_across_window_lengths(base_run):
    import keras

    from training.models import build_model

    base = keras.models.load_model(base_run / "model.keras")
    model = build_model("ds-cnn-s", (74, 10), 3)  # a 1.5 s window, three classes
    copied = custom.transfer_weights(model, base, freeze_first_conv=True)
    assert "logits" not in copied and len(copied) == 18
    for name in copied:
        for mine, theirs in zip(model.get_layer(name).get_weights(), base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    assert model.get_layer("logits").units == 3 and not model.layers[1].trainable


def test_frozen_blocks_keep_the_lower_blocks_of_the_base_fixed(base_run):
    import keras

    from training.models import build_model

    base = keras.models.load_model(base_run / "model.keras")
    model = build_model("ds-cnn-s", (50, 10), 3)
    custom.transfer_weights(model, base, freeze_first_conv=True, frozen_blocks=2)
    weighted = [l for l in model.layers if l.weights]
    assert [l.trainable for l in weighted] == [False] * 10 + [True] * 9  # conv, norm, 2 x 4 block layers; logits
    with pytest.raises(custom.ConfigError, match="only 4 blocks"):
        custom.transfer_weights(build_model("ds-cnn-s", (50, 10), 3), base, True, frozen_blocks=5)
    with pytest.raises(custom.ConfigError, match="frozen_blocks 1"):
        custom.CustomSettings(word="w", samples_dir=Path("clips"), frozen_blocks=1, freeze_first_conv=False)


def test_the_default_base_is_the_bigger_shipped_one_and_fits_a_wake_word_model():
    import keras

    from training.models import build_model

    run = custom.resolve_base(None)
    assert run == custom.resolve_base("kws12l") and run.name == "kws12l-run"
    settings = custom.base_settings(run)
    small = custom.base_settings(custom.resolve_base("kws12"))  # the bundled model's own float weights
    medium = custom.base_settings(custom.resolve_base("kws12m"))  # the default before, still shipped
    assert (settings.architecture, medium.architecture, small.architecture) == ("ds-cnn-l", "ds-cnn-m", "ds-cnn-s")
    assert settings.features == medium.features == small.features == FeatureSettings()  # the runtime's front end
    base = keras.models.load_model(run / "model.keras")
    model = build_model(settings.architecture, (73, 10), 3)
    copied = custom.transfer_weights(model, base, freeze_first_conv=True)
    weighted = [[l for l in m.layers if l.weights and not isinstance(l, keras.layers.Dense)] for m in (model, base)]
    assert "logits" not in copied and len(copied) == len(weighted[1]) == 22
    for mine, theirs in zip(*weighted):  # layer names differ by the order models were built: pair by position
        for a, b in zip(mine.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert model.count_params() > 5 * build_model(small.architecture, (73, 10), 3).count_params()


def test_a_base_on_20_coefficients_makes_a_bundle_on_20_that_listens_beside_kws12(inputs, tiny_data, tmp_path):
    """A base on 20 MFCC coefficients: its bundle takes the base's front end, which the runtime runs beside kws12's."""
    root, _ = tiny_data
    config = tmp_path / "mfcc20.toml"
    config.write_text("[features]\nn_mfcc = 20\n")
    base = tmp_path / "base"
    result = kws_train("train", str(base), "--data", str(root), "--epochs", "1", "--clips-per-class", "8",
                       "--config", str(config))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    twenty = dataclasses.replace(FeatureSettings(), n_mfcc=20)
    assert custom.base_settings(base).features == twenty
    models = tmp_path / "models"
    result = kws_train("custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(inputs["samples"]),
                       "--speech-commands", str(root), "--negatives", str(inputs["libri"]), "--base", str(base),
                       "--epochs", "1", "--clips-per-class", "20", "--holdout", "0.25", "--synth", "0",
                       "--near-misses", "0", "--hard-negative-epochs", "0", "--out", str(models))
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    bundle = load_bundle(models / "computer.json")
    assert bundle.features == twenty and bundle.input.shape[2] == 20  # the model file is checked against it on load
    clip = sorted(inputs["samples"].iterdir())[0]
    result = run_kws("detect", str(clip), "--model", "kws12", "--model", str(models / "computer.json"), "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert "2 models on 2 feature front end(s): kws12; computer" in result.stderr.decode()


def test_custom_trains_calibrates_and_exports_a_bundle(trained, base_run, inputs):
    import keras

    run, models, result = trained
    bundle = load_bundle(models / "computer.json")
    assert bundle.labels == ("_silence_", "_unknown_", "computer") and bundle.keywords == ("computer",)
    assert bundle.window_frames == bundle.features.frames_for(int(bundle.window_s * 16000) + 160)
    calibration = bundle.calibration
    assert calibration["threshold"] == bundle.thresholds["computer"]
    assert set(calibration["frr"]) == {"clean"} | {condition_name(s) for s in (20.0, 10.0, 5.0, 0.0)}
    assert calibration["positives"]["clips"] == 3 and calibration["negative_hours"] > 0
    assert bundle.smoothing_s == custom.DEFAULT_SMOOTHING_S == calibration["detector"]["smoothing_s"]  # calibrated for it

    settings = json.loads((run / "settings.json").read_text())
    split = settings["split"]
    assert len(split["positives_holdout"]) == 3 and len(split["positives_training"]) == 9
    assert not set(split["positives_holdout"]) & set(split["positives_training"])
    assert not set(split["negatives_calibration"]) & set(split["negatives_training"])
    assert split["negatives_calibration"] and split["negatives_training"]
    assert settings["custom"]["seed"] == 0 and settings["train"]["epochs"] == 2
    again, train_again = _custom_settings(build_parser().parse_args(["custom", "x", "--config", str(run / "settings.json")]))
    assert again.to_dict() == settings["custom"] and train_again.epochs == 2  # the run is reproducible from it

    # transfer: the frozen first convolution still holds the base's weights; the classifier is new
    model, base = keras.models.load_model(run / "model.keras"), keras.models.load_model(base_run / "model.keras")
    mine, theirs = (next(l for l in m.layers if isinstance(l, keras.layers.Conv2D)) for m in (model, base))
    np.testing.assert_array_equal(mine.get_weights()[0], theirs.get_weights()[0])  # (names differ: Keras numbers them)
    assert model.get_layer("logits").units == 3 and base.get_layer("logits").units == 12

    # rounds 2 and 3 (the default hard_negative_rounds = 2): windows of the training speakers' speech the model
    # so far took for the word, mined again with the model of round 2
    mined, again = (json.loads((run / name).read_text()) for name in ("hard_negatives.json",
                                                                      "hard_negatives_round3.json"))
    for found in (mined, again):
        sources = [re.sub(r" [+-][\d.]+ semitones$", "", m["file"]) for m in found]  # mine_voice_shifts: -3, +3
        assert found and all(f in split["negatives_training"] or f.startswith("synthetic speech: ") for f in sources)
        assert [m["score"] for m in found] == sorted((m["score"] for m in found), reverse=True)
    assert mined != again  # scored by different models
    assert settings["custom"]["mine_voice_shifts"] == [-3.0, 3.0]
    assert all((run / f"history_round{n}.json").is_file() for n in (1, 2))
    assert len(json.loads((run / "history.json").read_text())) == 1  # round 3's one epoch
    assert json.loads((run / "figures.json").read_text())["examples"]["hard negatives (mined)"] == len(mined + again)
    assert f"then 1 more in each of 2 rounds with {len(mined + again)} mined hard negatives" in (run / "computer.md").read_text()
    log = result.stderr.decode()  # hard_negative_share = 0.5: round 3 draws from both rounds' windows
    assert f"round 2: 50% of each epoch's _unknown_ examples from the {len(mined)} window(s) mined so far" in log
    assert f"round 3: 50% of each epoch's _unknown_ examples from the {len(mined + again)} window(s) mined" in log

    card = (run / "computer.md").read_text()
    assert "FRR" in card and "false accept" in card and "held-out" in card
    highest = calibration["highest_negatives"]  # what sets the threshold: held-out negatives, listed in the card
    assert highest and all(m["file"] in split["negatives_calibration"] + split["noise_files"] for m in highest)
    assert "## What sets the threshold" in card and f"| {highest[0]['score']:.4f} | {highest[0]['file']} |" in card
    assert "time by stage" in result.stderr.decode()
    assert re.search(r"mining also [1-9]\d* synthetic sentence", result.stderr.decode())  # synth_speech_s = 20
    assert settings["train"]["keep"] == "last" and settings["custom"]["synth_speech_s"] == 20
    assert "reverb in made-up rooms; SpecAugment masks, 2 of up to 5 frames and 1 of up to 2 coefficients)" in card
    assert "gain -25 to +6 dB, time shift" in card and settings["custom"]["gain_db"] == [-25.0, 6.0]
    figures = json.loads((run / "figures.json").read_text())
    assert figures["quietest_dbfs"] is None and not settings["custom"]["gain_to_quietest"]  # off by default
    quiet = custom.model_card(custom.CustomSettings.from_dict({**settings["custom"], "gain_to_quietest": True}),
                              {**figures, "quietest_dbfs": -40.2})
    assert "gain -25 to +6 dB and down to -40.2 dBFS speech (the quietest of your clips), time shift" in quiet
    assert settings["train"]["augment"]["time_masks"] == 2  # synthetic_rooms = 3, no --rir; SpecAugment by default
    examples = settings["examples"]  # whisper_share = 0.5: half the word's and half the _unknown_ training examples
    assert examples["whispered positives"] == round(0.5 * sum(examples[k] for k in (
        "positives (yours)", "synthetic positives", "positives (yours, repeated)") if k in examples))
    assert examples["partial takes"] == 2 * (examples["positives (yours)"] + examples["synthetic positives"])
    unknown = ("Speech Commands words", "speech windows", "near misses", "partial takes")
    assert examples["whispered _unknown_"] == round(0.5 * sum(examples.get(k, 0) for k in unknown))

    detected = run_kws("detect", "--model", str(models / "computer.json"), "--json",
                       split["positives_holdout"][0])
    assert detected.returncode == 0, detected.stderr.decode()


def test_near_misses_are_rendered_with_espeak(trained):
    if "espeak-ng" not in available_engines():
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng): no near-miss clips to check")
    run, _, _ = trained
    settings = json.loads((run / "settings.json").read_text())
    alikes = custom.find_sound_alikes("computer", settings["custom"]["sound_alikes"], None,
                                      settings["custom"]["sound_alike_phrases"])
    assert len(alikes) == 8 + 4 and "commuter" in alikes[:8]  # real words found by their phonemes
    assert all(len(a.split()) == 2 for a in alikes[8:])  # then phrases, like it across a word boundary
    texts = custom.near_miss_texts("computer", sound_alikes=alikes)
    assert "computar" in texts and "computar" not in settings["near_miss_texts"]  # said as the word itself
    assert settings["near_miss_texts"] == [t for t in texts if t != "computar"]
    assert settings["near_misses_said_as_word"] == ["computar"]
    card = (run / "computer.md").read_text()
    assert "said as the word but for unstressed vowels (a way of saying it, no near miss): \"computar\"" in card
    rendered = {p.parent.name for p in (run / "near_misses").glob("*/*.wav")}
    assert len(rendered) >= len(settings["near_miss_texts"]) - 2  # a rare rejection may cost a text
    assert settings["examples"]["near misses"] >= len(rendered)
    assert settings["examples"]["synthetic positives"] >= 1


def test_spec_augment_is_on_by_default_and_a_config_turns_it_off(tmp_path):
    argv = ["custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(tmp_path), "--base", "none"]
    _, train = _custom_settings(build_parser().parse_args(argv))
    assert (train.augment.time_masks, train.augment.time_mask_frames) == (2, 5)
    assert (train.augment.frequency_masks, train.augment.frequency_mask_bins) == (1, 2)
    assert train.augment.speed_probability == 0.3  # the other departures from AugmentSettings stay
    config = tmp_path / "off.toml"
    config.write_text("[augment]\ntime_masks = 0\nfrequency_masks = 0\n")
    _, train = _custom_settings(build_parser().parse_args(argv + ["--config", str(config)]))
    assert (train.augment.time_masks, train.augment.frequency_masks) == (0, 0)
    assert train.augment.time_mask_frames == 5 and train.augment.reverb_probability == 0.3


def test_every_word_and_unknown_example_gets_a_gain_over_the_whole_range_and_silence_none(tmp_path):
    from training.augment import AugmentSettings
    from training.train import Corpus

    argv = ["custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(tmp_path), "--base", "none"]
    settings, train = _custom_settings(build_parser().parse_args(argv))
    assert settings.gain_db == (-25.0, 6.0)  # down to 25 dB under the recording: quiet speakers and microphones
    tone = 0.05 * np.sin(np.arange(16000) * 0.3)
    corpus = Corpus(audio=np.repeat(np.round(tone * 32767).astype(np.int16)[None], 6, axis=0),
                    label=np.array([1, 1, 1, 2, 2, 2]), split=np.array(["training"] * 6),
                    noise=[np.random.default_rng(1).standard_normal(48000).astype(np.float32)],
                    labels=("_silence_", "_unknown_", "computer"))
    plain = dataclasses.replace(train, clips_per_class=300, augment=AugmentSettings(time_shift_ms=0, noise_probability=0))
    audio, labels = custom.GainEpochs(corpus, plain, settings.gain_db).epoch_audio(np.random.default_rng(0))
    rms = np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=1))
    gain_db = 20 * np.log10(rms / np.sqrt(np.mean(np.square(tone))))
    words = labels != 0
    assert words.sum() == 600 and np.all((gain_db[words] > -25.01) & (gain_db[words] < 6.01))
    assert gain_db[words].min() < -24 and gain_db[words].max() > 5  # the whole range, not a corner of it
    assert np.all((rms[~words] > 0.99e-4) & (rms[~words] < 0.301))  # _silence_: its own levels, no gain on top


def test_with_gain_to_quietest_each_example_can_be_played_as_quiet_as_the_quietest_clip(tmp_path):
    from training.augment import AugmentSettings
    from training.train import Corpus

    argv = ["custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(tmp_path), "--base", "none"]
    config = tmp_path / "quiet.toml"
    config.write_text("[custom]\ngain_db = [-10, 6]\ngain_to_quietest = true\n")
    settings, train = _custom_settings(build_parser().parse_args(argv + ["--config", str(config)]))
    assert settings.gain_to_quietest and settings.gain_db == (-10.0, 6.0)
    tone = np.sin(np.arange(16000) * 0.3)
    loud, quiet = 0.1 * tone, 0.001 * tone  # speech at -23 and -63 dBFS
    rows = np.stack([loud, loud, loud, quiet, quiet, quiet])
    corpus = Corpus(audio=np.round(rows * 32767).astype(np.int16), label=np.array([1, 2, 2, 1, 2, 2]),
                    split=np.array(["training"] * 6), noise=[np.zeros(16000, np.float32)],
                    labels=("_silence_", "_unknown_", "computer"))
    plain = dataclasses.replace(train, clips_per_class=400, augment=AugmentSettings(time_shift_ms=0, noise_probability=0))
    audio, labels = custom.GainEpochs(corpus, plain, settings.gain_db, quietest_dbfs=-43.0).epoch_audio(
        np.random.default_rng(0))
    level = 20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=1)) + 1e-12)  # _silence_: 0
    was_loud = level > -50  # the quiet rows stay under -57 dBFS at +6 dB, the loud ones over -44 at -20 dB
    gain_db = np.where(was_loud, level - 20 * np.log10(0.1 / np.sqrt(2)), level - 20 * np.log10(0.001 / np.sqrt(2)))
    words = labels != 0
    loud_words, quiet_words = words & was_loud, words & ~was_loud
    assert loud_words.sum() > 200 and quiet_words.sum() > 200
    # loud examples (-23 dBFS) go down to the quietest clip's -43 dBFS: gains from -20 dB, not just -10
    assert np.all((gain_db[loud_words] > -20.01) & (gain_db[loud_words] < 6.01)) and gain_db[loud_words].min() < -19
    # quiet ones (-63 dBFS, quieter than the quietest clip) keep gain_db's own range
    assert np.all((gain_db[quiet_words] > -10.01) & (gain_db[quiet_words] < 6.01)) and gain_db[quiet_words].min() < -9
    plain_maker = custom.GainEpochs(corpus, plain, settings.gain_db)  # without it: -10 dB at most, loud or quiet
    audio, labels = plain_maker.epoch_audio(np.random.default_rng(0))
    level = 20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=1)) + 1e-12)  # _silence_: 0
    assert level[(labels != 0) & (level > -50)].min() > 20 * np.log10(0.1 / np.sqrt(2)) - 10.01


def test_a_hard_negative_share_draws_that_share_of_unknown_from_the_mined_windows(tmp_path):
    from training.train import Corpus, EpochMaker

    argv = ["custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(tmp_path), "--base", "none"]
    settings, train = _custom_settings(build_parser().parse_args(argv))
    assert settings.hard_negative_share == 0.0
    corpus = Corpus(audio=np.zeros((9, 16000), np.int16), label=np.array([1, 1, 1, 1, 2, 2, 1, 1, 1]),
                    split=np.array(["training"] * 8 + ["validation"]), noise=[np.zeros(16000, np.float32)],
                    labels=("_silence_", "_unknown_", "computer"))
    plain = dataclasses.replace(train, clips_per_class=300)
    rows = custom.GainEpochs(corpus, plain, settings.gain_db, mined=np.arange(6, 9), mined_share=0.4).draw(
        1, np.random.default_rng(0))
    assert len(rows) == 300 and np.isin(rows, [6, 7]).sum() == 120 and 8 not in rows  # 40% mined; 8 validates
    assert set(rows[~np.isin(rows, [6, 7])]) == {0, 1, 2, 3}
    assert set(custom.GainEpochs(corpus, plain, settings.gain_db, mined=np.arange(6, 9)).draw(
        2, np.random.default_rng(0))) == {4, 5}  # the word's rows as ever
    for mined in (None, np.arange(6, 9)):  # share 0 (the default): the draws of EpochMaker, row for row
        unshared = custom.GainEpochs(corpus, plain, settings.gain_db, mined=mined).draw(1, np.random.default_rng(3))
        np.testing.assert_array_equal(unshared, EpochMaker(corpus, plain).draw(1, np.random.default_rng(3)))


def test_unknown_per_epoch_draws_more_unknown_and_fewer_silence_in_an_epoch_of_the_same_size(tmp_path):
    from training.train import Corpus

    argv = ["custom", str(tmp_path / "run"), "--word", "computer", "--samples", str(tmp_path), "--base", "none"]
    settings, train = _custom_settings(build_parser().parse_args(argv))
    assert settings.unknown_per_epoch == 1.0
    corpus = Corpus(audio=np.zeros((6, 16000), np.int16), label=np.array([1, 1, 1, 2, 2, 1]),
                    split=np.array(["training"] * 5 + ["validation"]), noise=[np.zeros(16000, np.float32)],
                    labels=("_silence_", "_unknown_", "computer"))
    plain = dataclasses.replace(train, clips_per_class=40)
    for share, counts in ((1.0, [40, 40, 40]), (1.5, [20, 60, 40]), (0.5, [60, 20, 40])):
        maker = custom.GainEpochs(corpus, plain, settings.gain_db, unknown_per_epoch=share)
        _, labels = maker.epoch_audio(np.random.default_rng(0))
        assert np.bincount(labels, minlength=3).tolist() == counts, share
    mined = custom.GainEpochs(corpus, plain, settings.gain_db, mined=np.array([2]), mined_share=0.5,
                              unknown_per_epoch=1.5).draw(1, np.random.default_rng(0))
    assert len(mined) == 60 and np.count_nonzero(mined == 2) == 30 and 5 not in mined  # 5 validates
    with pytest.raises(custom.ConfigError, match="unknown_per_epoch 2"):
        custom.CustomSettings(word="computer", samples_dir=tmp_path, unknown_per_epoch=2.0)


def test_bad_inputs_are_one_line(inputs, tmp_path):
    run = str(tmp_path / "run")
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(inputs["samples"].iterdir())[:3]:
        shutil.copy(path, few / path.name)
    rounds = tmp_path / "rounds.toml"
    rounds.write_text("[custom]\nhard_negative_rounds = 0\n")
    share = tmp_path / "share.toml"
    share.write_text("[custom]\nhard_negative_share = 1\n")  # no other _unknown_ examples left at all
    cases = [
        (["--word", "computer", "--samples", str(tmp_path / "missing"), "--base", "none"], "samples folder"),
        (["--word", "computer", "--samples", str(few), "--base", "none"], "at least 5"),
        (["--word", "com/puter", "--samples", str(inputs["samples"]), "--base", "none"], "--word"),
        (["--word", "computer", "--samples", str(inputs["samples"]), "--base", str(tmp_path / "nobase")],
         "--base none"),
        (["--word", "computer", "--samples", str(inputs["samples"]), "--config", str(rounds)], "hard_negative_rounds 0"),
        (["--word", "computer", "--samples", str(inputs["samples"]), "--config", str(share)],
         "hard_negative_share 1: give a share in [0, 1)"),
    ]
    for args, expected in cases:
        line = one_error_line(kws_train("custom", run, *args))
        assert expected in line, line


def test_benchmark_wakeword_prints_the_table(base_run, inputs, tiny_data, tmp_path):
    """scripts/benchmark_wakeword.py on 13 clips (8 to train, 5 held out), one tiny epoch: table printed, exit 0."""
    import subprocess
    import sys

    from conftest import ROOT

    root, _ = tiny_data
    word = tmp_path / "computer"
    word.mkdir()
    for path in sorted(WAKEWORDS.glob("*.ogg"))[12:25]:
        shutil.copy(path, word / path.name)
    result = subprocess.run(
        [sys.executable, "scripts/benchmark_wakeword.py", str(word), "--count", "8", "--seed", "0",
         "--speech-commands", str(root), "--negatives", str(inputs["libri"]), "--noise", str(root / "_background_noise_"),
         "--base", str(base_run), "--epochs", "1", "--clips-per-class", "20", "--run-dir", str(tmp_path / "run")],
        capture_output=True, timeout=600, cwd=ROOT)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert "5 held-out recordings" in out and "| condition | FRR @ 0.5 FA/h" in out
    for condition in ("clean", "20 dB", "10 dB", "5 dB", "0 dB"):
        assert f"| {condition} | " in out
    assert "FA/h reachable" in out and "wall" in out
    assert (tmp_path / "run" / "models" / "computer.json").is_file()
    assert (tmp_path / "run" / "det.png").stat().st_size > 1000
    figures = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert figures["held_out_positives"] == 5 and figures["det"] and figures["negative_hours"] > 0
    assert f"{figures['at_target']['frr']['clean']:.1%}" in out
    top = figures["highest_negatives"][0]
    assert f"(what sets the threshold): {top['score']:.4f} '{top['keyword']}' in {top['file']} at " in out
    assert len(list((tmp_path / "run" / "samples").iterdir())) == 8
    held_out = {p.name for p in word.iterdir()} - {p.name for p in (tmp_path / "run" / "samples").iterdir()}
    missed = figures["missed_at_target"]  # the clips behind each FRR, as the detector replays them
    assert list(missed) == list(figures["at_target"]["frr"]) and any(missed.values())  # one tiny epoch misses some
    for condition, names in missed.items():
        assert len(names) == round(5 * figures["at_target"]["frr"][condition])
        assert {Path(name).name for name in names} <= held_out and len(set(names)) == len(names)
    assert f"- missed at 0.5 FA/h, clean: {', '.join(Path(n).name for n in missed['clean']) or 'none'}\n" in out

    # the same bundle measured again at another smoothing span: its split made again, a copy calibrated, no training
    again = subprocess.run(
        [sys.executable, "scripts/benchmark_wakeword.py", str(word), "--count", "8", "--seed", "0",
         "--speech-commands", str(root), "--negatives", str(inputs["libri"]), "--noise", str(root / "_background_noise_"),
         "--bundle", str(tmp_path / "run" / "models" / "computer.json"), "--smoothing-s", "0.5",
         "--run-dir", str(tmp_path / "again")], capture_output=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr.decode()[-4000:]
    assert "no training" in again.stdout.decode() and "5 held-out recordings" in again.stdout.decode()
    original, copy = (load_bundle(tmp_path / d / "models" / "computer.json") for d in ("run", "again"))
    assert original.smoothing_s == custom.DEFAULT_SMOOTHING_S and copy.smoothing_s == 0.5
    assert copy.calibration["previous_smoothing_s"] == custom.DEFAULT_SMOOTHING_S and copy.sha256 == original.sha256
    assert copy.calibration["negative_hours"] == original.calibration["negative_hours"]  # the same held-out negatives
    split = [json.loads((tmp_path / d / "settings.json").read_text())["split"] for d in ("run", "again")]
    assert split[0]["negatives_calibration"] == split[1]["negatives_calibration"]
    assert [Path(p).name for p in split[0]["positives_holdout"]] == [Path(p).name for p in split[1]["positives_holdout"]]

    few = subprocess.run([sys.executable, "scripts/benchmark_wakeword.py", str(word), "--count", "9",
                          "--noise", str(root / "_background_noise_")], capture_output=True, timeout=120, cwd=ROOT)
    assert few.returncode == 2 and few.stderr.decode().strip().startswith("benchmark_wakeword: error: ")
    assert len(few.stderr.decode().strip().splitlines()) == 1


class EnergyModel:
    """A stand-in classifier: the word's probability is a window's mean log energy (MFCC c0), scaled to [0, 1]
    over the batch (the tests' windows fit in one). Enough to check where the miner looks; the real model is in
    ``trained``."""

    output_shape = (None, 3)

    def predict_on_batch(self, x):
        energy = x[:, :, 0, 0].mean(axis=1)  # x: (windows, frames, coefficients, 1)
        score = (energy - energy.min()) / max(float(np.ptp(energy)), 1e-9)
        return np.stack([np.zeros_like(score), 1 - score, score], axis=1)


def test_mining_keeps_one_window_per_peak_the_highest_first(tmp_path):
    from kws.audio_file import wav_bytes

    rate = 16000
    audio = np.random.default_rng(0).normal(0, 0.01, 8 * rate).astype(np.float32)
    tone = np.sin(2 * np.pi * 440 * np.arange(int(0.4 * rate)) / rate).astype(np.float32)
    audio[2 * rate : 2 * rate + tone.size] += 0.5 * tone  # the loudest sound, at 2.0 s
    audio[int(5.5 * rate) : int(5.5 * rate) + tone.size] += 0.2 * tone  # a quieter one, at 5.5 s
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes(audio, rate))
    quiet = tmp_path / "quiet.wav"
    quiet.write_bytes(wav_bytes(np.zeros(rate // 2, np.float32), rate))  # shorter than a window: left out
    features = FeatureSettings()

    windows, where = custom.mine_hard_negatives(EnergyModel(), [path, quiet], rate, features, keyword=2,
                                                limit=10, min_score=0.3)
    assert len(where) == len(windows) == 2, where  # one per loud sound, not one per overlapping window
    assert where[0]["score"] > where[1]["score"]
    assert 2.4 - 1.0 - 0.01 <= where[0]["start_s"] <= 2.0 and 5.9 - 1.0 - 0.01 <= where[1]["start_s"] <= 5.5
    assert windows.dtype == np.int16 and windows.shape == (2, rate)
    assert np.abs(windows[0]).max() > 0.4 * 32767 and np.abs(windows[1]).max() < 0.3 * 32767

    top, top_where = custom.mine_hard_negatives(EnergyModel(), [path], rate, features, 2, limit=1, min_score=0.3)
    assert len(top) == 1 and top_where[0] == where[0]
    none, _ = custom.mine_hard_negatives(EnergyModel(), [path], rate, features, 2, limit=10, min_score=1.01)
    assert none.shape == (0, rate)


def test_mining_takes_audio_arrays_beside_files(tmp_path):
    from kws.audio_file import wav_bytes

    rate = 16000
    rng = np.random.default_rng(1)
    quiet = rng.normal(0, 0.01, 4 * rate).astype(np.float32)
    loud = quiet.copy()
    loud[rate : rate + rate // 2] += 0.5 * np.sin(2 * np.pi * 300 * np.arange(rate // 2) / rate).astype(np.float32)
    path = tmp_path / "quiet.wav"
    path.write_bytes(wav_bytes(quiet, rate))
    windows, where = custom.mine_hard_negatives(EnergyModel(), [path, loud], rate, FeatureSettings(), 2,
                                                limit=1, min_score=0.3)
    assert where[0]["file"] == "audio 1" and 0.5 - 0.01 <= where[0]["start_s"] <= 1.0
    assert np.abs(windows[0]).max() > 0.4 * 32767
    _, named = custom.mine_hard_negatives(EnergyModel(), [path, loud], rate, FeatureSettings(), 2, limit=1,
                                          min_score=0.3, names=["quiet", "a tone"])
    assert named[0]["file"] == "a tone"


def test_pseudo_speech_strings_words_together_without_their_pauses(shared_data):
    rate = 16000
    rng = np.random.default_rng(0)
    clips, _ = custom.speech_commands_clips(shared_data / "speech_commands", "computer", 40, rng)
    from training import data

    words = data.decode_clips([c.path for c in clips[:40]])
    from kws.record import check_take

    parts = [check_take(w.astype(np.float32) / 32768, whole_file=True).trimmed for w in words]
    sizes = [p.size for p in parts]
    assert min(sizes) >= 0.1 * rate and np.median(sizes) < 0.85 * words.shape[1], sizes  # noisy clips stay whole
    streams = custom.pseudo_speech(words, 20.0, np.random.default_rng(0), rate, stream_s=8.0)
    lengths = [s.size / rate for s in streams]
    assert 20.0 <= sum(lengths) < 21.5 and all(l < 9.5 for l in lengths) and len(streams) == 3, lengths
    assert sum(lengths) < 0.8 * len(words)  # the words' pauses are gone: far less than 40 one-second clips
    assert custom.pseudo_speech(words[:0], 20.0, rng, rate) == []


def test_clip_window_keeps_the_recordings_own_background(tmp_path):
    """The positive's window is cut from the file around its speech, not padded with digital zeros."""
    from kws.record import check_take
    from kws.audio_file import read_audio

    path = sorted(WAKEWORDS.glob("*.ogg"))[0]
    audio = read_audio(path, 16000)
    found = check_take(audio, whole_file=True)
    samples = 24000
    window = custom.clip_window(path, samples, 16000)
    start = round(found.speech_centre_s * 16000) - samples // 2
    expected = np.zeros(samples, np.float32)
    lo, hi = max(0, start), min(audio.size, start + samples)
    expected[lo - start : hi - start] = audio[lo:hi]
    np.testing.assert_array_equal(window, expected)
    assert found.voiced_s < 1.0 and np.count_nonzero(window) > 0.9 * min(samples, audio.size)


def test_clip_window_fills_digital_padding_with_the_clips_background():
    """The alexa recordings end with about 0.5 s of digital zeros: the window must not carry them (a model
    learns that digital silence means the word, and fires at the end of every file)."""
    from kws.audio_file import read_audio

    path = SHARED / "data" / "wakewords" / "alexa" / "1.ogg"
    audio = read_audio(path, 16000)
    zeros = np.abs(audio) < custom.DIGITAL_SILENCE
    assert zeros[-4000:].all()  # the recording as it is: padded
    window = custom.clip_window(path, 3 * 16000, 16000)  # longer than the clip: both ends reach past it
    assert np.mean(np.abs(window) < custom.DIGITAL_SILENCE) < 0.05
    first, last = custom.audible_span(audio)
    assert np.sqrt(np.mean(window[-8000:] ** 2)) < 0.1 * np.abs(audio[first:last]).max()  # background, not speech


def test_shifted_voices_move_pitch_and_tempo_together():
    rate = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    for semitones, pitch_hz in ((12.0, 880.0), (-12.0, 220.0), (3.0, 440 * 2 ** 0.25)):
        shifted = custom.shift_voice(tone, semitones)
        assert shifted.dtype == np.float32 and abs(shifted.size - rate / 2 ** (semitones / 12)) <= 2
        found = np.argmax(np.abs(np.fft.rfft(shifted))) * rate / shifted.size
        assert abs(found - pitch_hz) < 3, (semitones, found)
    settings = custom.CustomSettings.from_dict({"word": "computer", "samples_dir": "x", "mine_voice_shifts": [-3, 3]})
    assert settings.mine_voice_shifts == (-3, 3)
