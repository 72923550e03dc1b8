"""Distillation teachers: each with its own front end and label order, mapped to our 12 labels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.errors import KwsError
from training.data import LABELS, audio_files

from conftest import ROOT, SHARED, TEST_A

pytest.importorskip("tensorflow", reason="the teachers need the [train] extra")

from training import teachers as T  # noqa: E402

TEACHERS = Path(os.environ.get(T.ENV_VAR) or SHARED / "teachers")
WORDS = ("yes", "stop", "off", "_silence_")
CLIPS_PER_WORD = 3

# Correct answers (of 12) each teacher must reach on the first 3 clips of each word.
# Measured: mlperf 12, arm-s 10, arm-m 11, arm-l 11, attention-rnn 9 (all keywords, no
# _silence_: it calls noise "_unknown_"), attention-rnn-global 10. A wrong label
# mapping gets about 0-2 right.
MIN_CORRECT = {"mlperf": 11, "arm-s": 9, "arm-m": 10, "arm-l": 10, "attention-rnn": 8, "attention-rnn-global": 9}


@pytest.fixture(scope="module")
def clips():
    if not TEACHERS.is_dir():
        pytest.fail(f"{TEACHERS} not found: the tests need ../shared/teachers (or set {T.ENV_VAR})")
    audio, labels = [], []
    for word in WORDS:
        for path in audio_files(TEST_A / word)[:CLIPS_PER_WORD]:
            clip, rate = sf.read(str(path), dtype="float32")
            assert rate == 16000 and clip.shape == (16000,)
            audio.append(clip)
            labels.append(LABELS.index(word))
    return np.stack(audio), np.array(labels)


_loaded: dict = {}


def teacher(name: str):
    if name not in _loaded:
        _loaded[name] = T.load_teacher(name, root=TEACHERS)
    return _loaded[name]


def check_probabilities(probs: np.ndarray, n: int) -> None:
    assert probs.shape == (n, len(LABELS)) and probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_the_registry_has_every_teacher():
    assert set(MIN_CORRECT) == set(T.REGISTRY)


@pytest.mark.parametrize("name", sorted(MIN_CORRECT))
def test_teacher_recognises_real_clips(name, clips):
    audio, labels = clips
    probs = teacher(name).predict(audio)
    check_probabilities(probs, len(audio))
    correct = int((probs.argmax(axis=1) == labels).sum())
    assert correct >= MIN_CORRECT[name], f"{name}: {correct}/{len(labels)}, predicted {probs.argmax(axis=1)}"


def test_a_wrong_label_mapping_fails_the_check(clips):
    audio, labels = clips
    mlperf = teacher("mlperf")
    right = mlperf.predict(audio)
    saved = mlperf._mapping
    try:
        mlperf._mapping = np.roll(saved, 1, axis=1)  # every native label one place off
        wrong = mlperf.predict(audio)
    finally:
        mlperf._mapping = saved
    assert int((wrong.argmax(axis=1) == labels).sum()) < min(MIN_CORRECT.values())
    assert int((right.argmax(axis=1) == labels).sum()) >= MIN_CORRECT["mlperf"]


def test_label_mappings():
    attention = T.label_mapping(T.ATTENTION_RNN_LABELS)
    assert attention.shape == (36, 12) and np.all(attention.sum(axis=1) == 1)
    assert attention[0, LABELS.index("_silence_")] == 1  # silence / unknown / background
    assert [int(np.argmax(attention[i])) for i in range(2, 12)] == list(range(2, 12))  # yes .. go
    assert attention[:, LABELS.index("_unknown_")].sum() == 25  # nine, zero..eight, 15 other words
    assert attention[1, LABELS.index("_unknown_")] == 1 and attention[12:, LABELS.index("_unknown_")].all()
    mlperf = T.label_mapping(T.MlperfTeacher.native_labels)
    assert [LABELS[int(np.argmax(row))] for row in mlperf] == list(T.MlperfTeacher.native_labels)
    assert LABELS[int(np.argmax(mlperf[0]))] == "down" and LABELS[int(np.argmax(mlperf[10]))] == "_silence_"


def test_predict_batches_and_checks_the_shape(clips):
    audio, _ = clips
    arm = teacher("arm-s")
    whole = arm.predict(audio)
    saved = arm.batch_size
    try:
        arm.batch_size = 5  # several batches with a short tail
        np.testing.assert_allclose(arm.predict(audio), whole, atol=1e-6)
    finally:
        arm.batch_size = saved
    with pytest.raises(ValueError, match="16000"):
        arm.predict(np.zeros((2, 8000), np.float32))


def test_ensemble_is_the_mean_of_its_members(clips):
    audio, _ = clips
    a, b = teacher("mlperf"), teacher("arm-s")
    pa, pb = a.predict(audio), b.predict(audio)
    ensemble = T.Ensemble([a, b])
    check_probabilities(ensemble.predict(audio), len(audio))
    np.testing.assert_allclose(ensemble.predict(audio), (pa + pb) / 2, atol=1e-6)
    np.testing.assert_allclose(T.Ensemble([a, b], weights=[3, 1]).predict(audio), 0.75 * pa + 0.25 * pb, atol=1e-6)
    loaded = T.load_teacher(" mlperf, arm-s ", root=TEACHERS)
    assert isinstance(loaded, T.Ensemble) and loaded.name == "mlperf,arm-s"
    np.testing.assert_allclose(loaded.predict(audio), (pa + pb) / 2, atol=1e-6)


@pytest.mark.parametrize("spec", ["nope", "mlperf,nope", ""])
def test_unknown_teacher_is_one_clear_line(spec):
    with pytest.raises(T.TeacherError) as info:
        T.load_teacher(spec, root=TEACHERS)
    message = str(info.value)
    assert isinstance(info.value, KwsError) and "\n" not in message
    assert "choose from mlperf, arm-s" in message
    if spec:
        assert "unknown teacher 'nope'" in message


def test_missing_file_names_it(tmp_path, monkeypatch):
    with pytest.raises(T.TeacherError, match=r"teacher file .*DS_CNN_L\.pb not found") as info:
        T.load_teacher("arm-l", root=tmp_path)
    assert str(tmp_path / "arm_hello_edge_dscnn" / "DS_CNN_L.pb") in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.setenv(T.ENV_VAR, str(tmp_path))
    assert T.teachers_root() == tmp_path
    with pytest.raises(T.TeacherError, match=re.escape(str(tmp_path / "attention_rnn" / "model-attRNN.h5"))):
        T.load_teacher("attention-rnn")
    assert T.teachers_root(TEACHERS) == TEACHERS  # the argument wins over the variable
    monkeypatch.delenv(T.ENV_VAR)
    assert T.teachers_root() == ROOT.parent / "shared" / "teachers"


def test_a_copied_teacher_folder_works(tmp_path, clips):
    audio, _ = clips
    folder = tmp_path / "mlperf_tiny_dscnn"
    folder.mkdir()
    name = "kws_ref_model_float32.tflite"
    (folder / name).write_bytes((TEACHERS / "mlperf_tiny_dscnn" / name).read_bytes())
    copied = T.load_teacher("mlperf", root=tmp_path).predict(audio[:4])
    np.testing.assert_allclose(copied, teacher("mlperf").predict(audio[:4]), atol=1e-6)


def test_importing_teachers_loads_no_tensorflow():
    code = ("import sys, training.teachers; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"
