"""Distillation and teacher plumbing on tiny data: soft targets, the target cache, the student loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.distill import DistillSettings, TargetCache, soften
from training.run import DataSettings
from training.train import EpochMaker, TrainSettings, load_corpus, train

from conftest import kws_train

pytest.importorskip("tensorflow", reason="training needs the [train] extra")


class CountingTeacher:
    """A small fake passed in through the constructor: always says ``label``, counts its calls."""

    def __init__(self, label: int, n_classes: int = 12):
        self.name = f"always-{label}"
        self.label, self.n_classes, self.calls = label, n_classes, 0

    def predict(self, audio):
        self.calls += 1
        out = np.full((len(audio), self.n_classes), 0.01 / (self.n_classes - 1), np.float32)
        out[:, self.label] = 0.99
        return out


@pytest.fixture(scope="module")
def corpus(tiny_data):
    root, _ = tiny_data
    return load_corpus(DataSettings(root))


def test_soften():
    p = np.array([[0.7, 0.2, 0.1]], np.float32)
    assert np.allclose(soften(p, 1.0), p, atol=1e-6)
    hot = soften(p, 4.0)
    assert np.isclose(hot.sum(), 1) and hot[0, 0] < 0.7 and hot[0, 2] > 0.1
    assert np.allclose(hot, np.array([[0.7, 0.2, 0.1]]) ** 0.25 / np.sum(np.array([0.7, 0.2, 0.1]) ** 0.25))


def test_target_cache_computes_each_augmented_epoch_once(corpus, tmp_path):
    settings = TrainSettings(clips_per_class=5, distill=DistillSettings(teacher="fake", cached_epochs=2))
    teacher = CountingTeacher(3)
    cache = TargetCache(EpochMaker(corpus, settings), settings, tmp_path, teacher)
    first = cache.get(0)
    assert teacher.calls == 1
    features, labels, targets = first
    assert features.shape == (60, 49, 10) and labels.shape == (60,) and targets.shape == (60, 12)
    again = cache.get(2)  # epoch 2 cycles back to cached epoch 0
    assert teacher.calls == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = cache.get(1)
    assert teacher.calls == 2 and not np.array_equal(other[0], first[0])
    # a fresh cache over the same folder reads what is on disk
    unasked = CountingTeacher(3)
    fresh = TargetCache(EpochMaker(corpus, settings), settings, tmp_path, unasked)
    assert np.array_equal(fresh.get(1)[0], other[0]) and unasked.calls == 0

    # adding a member to the ensemble asks only the new one; the targets are the members' mean
    from training.teachers import Ensemble

    kept, added = CountingTeacher(3), CountingTeacher(5)
    pair = TargetCache(EpochMaker(corpus, settings), settings, tmp_path, Ensemble([kept, added]))
    assert pair.dir == cache.dir
    _, _, mean = pair.get(0)
    assert kept.calls == 0 and added.calls == 1
    assert np.allclose(mean[:, 3], (0.99 + 0.01 / 11) / 2, atol=1e-5) and np.allclose(mean[:, 5], mean[:, 3])
    assert np.allclose(mean.sum(axis=1), 1, atol=1e-5)


def test_a_retrained_run_teacher_is_asked_again(tmp_path):
    from training.distill import Member

    run = tmp_path / "teacher"
    run.mkdir()
    (run / "model.keras").write_bytes(b"one")
    first = Member(f"run:{run}").file_id
    assert Member(f"run:{run}").file_id == first
    (run / "model.keras").write_bytes(b"other")
    assert Member(f"run:{run}").file_id != first
    assert Member("mlperf").file_id != Member("arm-l").file_id


def test_an_unknown_teacher_is_refused_before_any_work(corpus, tmp_path):
    from training.teachers import TeacherError

    settings = TrainSettings(clips_per_class=5, distill=DistillSettings(teacher="mlperf,socrates"))
    with pytest.raises(TeacherError, match="unknown teacher 'socrates'"):
        TargetCache(EpochMaker(corpus, settings), settings, tmp_path)


def test_student_follows_the_teacher_when_only_soft_targets_count(corpus, tmp_path):
    """With hard_weight 0, a teacher that always says 'stop' makes the student say 'stop'."""
    stop = 10
    settings = TrainSettings(epochs=6, clips_per_class=8, batch_size=16, learning_rate=0.01, label_smoothing=0.0,
                             distill=DistillSettings(teacher="fake", hard_weight=0.0, soft_weight=1.0,
                                                     temperature=1.0, cached_epochs=2))
    model = train(corpus, settings, tmp_path / "run", target_dir=tmp_path / "targets", teacher=CountingTeacher(stop))
    x_val, _ = EpochMaker(corpus, settings).validation()

    def share_of_stop(model) -> float:
        # batch statistics: a few dozen steps are too few for BatchNorm's moving averages
        return float(np.mean(np.asarray(model(x_val[..., None], training=True)).argmax(axis=1) == stop))

    assert share_of_stop(model) > 0.9
    # and without distillation the same run does not collapse onto one class
    plain = TrainSettings(epochs=6, clips_per_class=8, batch_size=16, learning_rate=0.01, label_smoothing=0.0)
    assert share_of_stop(train(corpus, plain, tmp_path / "plain")) < 0.5


def test_cli_distils_from_a_real_teacher(tiny_data, tmp_path):
    root, _ = tiny_data
    run = tmp_path / "run"
    result = kws_train("train", str(run), "--data", str(root), "--cache", str(tmp_path / "cache"), "--epochs", "2",
                       "--clips-per-class", "6", "--teacher", "mlperf", "--cached-epochs", "1", "--temperature", "3")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    settings = json.loads((run / "settings.json").read_text())
    assert settings["train"]["distill"]["teacher"] == "mlperf"
    assert settings["train"]["distill"]["temperature"] == 3.0
    cached = list((tmp_path / "cache" / "targets").glob("*/epoch_000.mlperf-*.npy"))
    assert len(cached) == 1
    targets = np.load(cached[0])
    assert targets.shape == (72, 12) and np.allclose(targets.sum(axis=1), 1, atol=1e-4)
    assert "teacher targets" in result.stderr.decode()


def test_cli_measures_teachers_and_rejects_unknown_ones(tiny_data, tmp_path):
    root, _ = tiny_data
    result = kws_train("teachers", "mlperf", "--data", str(root))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "mlperf on validation" in result.stdout.decode() and "accuracy" in result.stdout.decode()
    bad = kws_train("train", str(tmp_path / "r"), "--data", str(root), "--teacher", "socrates")
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines()[-1].startswith("kws-train: error: unknown teacher 'socrates'")


def test_cache_key_ignores_parts_that_are_off_and_spec_augment(corpus, tmp_path):
    from training.augment import AugmentSettings

    def key_dir(augment):
        settings = TrainSettings(clips_per_class=5, augment=augment, distill=DistillSettings(teacher="fake"))
        return TargetCache(EpochMaker(corpus, settings), settings, tmp_path, CountingTeacher(0)).dir

    base = key_dir(AugmentSettings())
    assert key_dir(AugmentSettings(speed_range=(0.5, 2.0), time_masks=2, time_mask_frames=5)) == base
    assert key_dir(AugmentSettings(speed_probability=0.5)) != base
    assert key_dir(AugmentSettings(noise_snr_db=(0.0, 20.0))) != base


def test_label_only_classes_take_their_label_as_soft_target():
    from training.distill import trust_labels

    targets = np.full((4, 3), 1 / 3, np.float32)
    labels = np.array([0, 1, 2, 0])
    out = trust_labels(targets, labels, [0])
    assert np.array_equal(out[[0, 3]], [[1, 0, 0], [1, 0, 0]])
    assert np.array_equal(out[[1, 2]], targets[[1, 2]]) and np.all(targets == np.float32(1 / 3))  # input untouched
    assert trust_labels(targets, labels, []) is targets


def test_label_only_reaches_training_and_rejects_strangers(tiny_data, tmp_path):
    """A teacher that always says 'stop': trusted on all but _silence_, silence is learnt; trusted on all, not."""
    stop = 10
    root, _ = tiny_data
    corpus = load_corpus(DataSettings(root))

    def silence_probability(label_only):
        settings = TrainSettings(epochs=8, clips_per_class=12, batch_size=16, learning_rate=0.01, label_smoothing=0.0,
                                 distill=DistillSettings(teacher="fake", hard_weight=0.0, soft_weight=1.0,
                                                         temperature=1.0, cached_epochs=2, label_only=label_only))
        model = train(corpus, settings, tmp_path / "run", target_dir=tmp_path / "targets",
                      teacher=CountingTeacher(stop))
        x_val, y_val = EpochMaker(corpus, settings).validation()
        # a balanced batch (validation is mostly noise cuts), scored with batch statistics as above
        words = np.flatnonzero(y_val != 0)
        chosen = np.concatenate([np.flatnonzero(y_val == 0)[: len(words)], words])
        p = np.asarray(model(x_val[chosen, ..., None], training=True))
        silence = y_val[chosen] == 0
        return float(p[silence, 0].mean()), float(p[~silence, 0].mean())

    on_silence, on_words = silence_probability(["_silence_"])
    untrusting_silence, _ = silence_probability([])
    assert untrusting_silence < 0.02
    assert on_silence > 0.05 and on_silence > 3 * untrusting_silence and on_silence > 1.5 * on_words
    bad = kws_train("train", str(tmp_path / "r"), "--data", str(root), "--teacher", "mlperf", "--label-only", "_quiet_")
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines()[-1].startswith("kws-train: error: distill label_only: no class _quiet_")
