"""Training end to end on a tiny data set: real TensorFlow, one epoch, a bundle the runtime runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kws.bundle import load_bundle
from training.data import scan_speech_commands

from conftest import UNKNOWN_WORDS, kws_train, run_kws

pytest.importorskip("tensorflow", reason="training needs the [train] extra")




def test_loader_reads_the_official_layout(tiny_data):
    root, _ = tiny_data
    clips = scan_speech_commands(root)
    assert len(clips) == 4 * 12
    assert sum(c.split == "validation" for c in clips) == 12
    assert {c.label() for c in clips if c.word in UNKNOWN_WORDS} == {"_unknown_"}


def test_runs_decoding_the_same_clips_at_once_share_the_cache_safely(tiny_data, tmp_path):
    """Two runs with one ``--cache`` (the benchmark runs two at a time) each write under a temporary name of
    their own; the cache they leave is whole, and read back the same."""
    from concurrent.futures import ThreadPoolExecutor

    from training.data import decode_clips

    root, _ = tiny_data
    paths = [c.path for c in scan_speech_commands(root)]
    cache = tmp_path / "cache"
    for _ in range(3):
        for old in cache.glob("*"):
            old.unlink()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: decode_clips(paths, cache, workers=1), range(4)))
        assert all((r == results[0]).all() for r in results) and results[0].shape == (len(paths), 16000)
        assert [p.suffix for p in cache.iterdir()] == [".npy"]  # one cache file, no temporary left
        assert (decode_clips(paths, cache) == results[0]).all()


def test_train_quantize_evaluate_export_then_run(tiny_data, tmp_path):
    root, test = tiny_data
    run, models = tmp_path / "run", tmp_path / "models"
    result = kws_train("all", str(run), "--data", str(root), "--epochs", "1", "--clips-per-class", "8",
                       "--representative", "16", "--test", str(test), "--out", str(models), "--name", "tiny")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    for name in ("model.keras", "model_int8.tflite", "settings.json", "history.json", "curve.png",
                 "confusion_validation_int8.png", f"confusion_{test.name}_float.png", "evaluation.json"):
        assert (run / name).is_file(), name
    assert "time by stage" in result.stderr.decode()
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation[test.name]["int8"]["clips"] == 6
    assert 0 <= evaluation["validation"]["float"]["accuracy"] <= 1

    bundle = load_bundle(models / "tiny.json")
    assert bundle.architecture == "ds-cnn-s" and bundle.parameters > 20000 and bundle.macs > 2_000_000
    assert bundle.input.dtype == "int8"
    manifest = json.loads((models / "tiny.json").read_text())
    assert manifest["metrics"][test.name]["int8"]["clips"] == 6
    assert manifest["training"]["data"]["root"] == str(root)

    clip = sorted((test / "yes").iterdir())[0]
    classified = run_kws("classify", "--model", str(models / "tiny.json"), "--json", str(clip))
    assert classified.returncode == 0, classified.stderr.decode()
    row = json.loads(classified.stdout)
    assert row["label"] in bundle.labels and abs(sum(row["scores"].values()) - 1) < 0.05
    detected = run_kws("detect", "--model", str(models / "tiny.json"), "--json", str(clip))
    assert detected.returncode == 0, detected.stderr.decode()


def test_bad_data_path_is_one_line(tmp_path):
    result = kws_train("train", str(tmp_path / "run"), "--data", str(tmp_path / "missing"), "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines()[-1].startswith("kws-train: error: data set folder")
    assert "Traceback" not in result.stderr.decode()


def _twin_models(seed: int):
    """Two copies of one small compiled classifier: convolution, batch norm, no dropout, plain SGD, so that a step
    depends only on its batch."""
    import keras
    from keras import layers

    from training.distill import DistillSettings
    from training.train import make_loss

    keras.utils.set_random_seed(seed)
    loss, accuracy = make_loss(3, 0.0, DistillSettings())
    twins = []
    for _ in range(2):
        model = keras.Sequential([keras.Input((20, 10, 1)), layers.Conv2D(4, 3), layers.BatchNormalization(),
                                  layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, metrics=[accuracy])
        twins.append(model)
    twins[1].set_weights(twins[0].get_weights())
    return twins


def test_fit_epoch_steps_through_the_rngs_order_as_fit_does_and_reports_its_epoch_means():
    """``fit_epoch`` (train_on_batch, no tf.data) must train exactly as ``fit`` on the rows in its order; the
    second epoch's means would take in the first's if it did not reset the metrics."""
    from training.train import fit_epoch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((250, 20, 10, 1)).astype(np.float32)  # 2 full batches of 100 and one of 50
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 250)]
    ours, keras_fit = _twin_models(0)
    for epoch in range(2):
        order = np.random.default_rng([7, epoch]).permutation(len(x))
        logs = fit_epoch(ours, x, y, 100, np.random.default_rng([7, epoch]))
        history = keras_fit.fit(x[order], y[order], batch_size=100, epochs=epoch + 1, initial_epoch=epoch,
                                shuffle=False, verbose=0).history
        assert set(logs) == {"loss", "accuracy"}
        assert logs["loss"] == pytest.approx(history["loss"][-1], rel=1e-4)
        assert logs["accuracy"] == pytest.approx(history["accuracy"][-1], abs=1e-6)
    for mine, theirs in zip(ours.get_weights(), keras_fit.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)
