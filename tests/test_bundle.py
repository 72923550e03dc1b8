"""Model bundles: the bundled model loads; every kind of damage is one clear error."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

from kws.audio_file import read_audio
from kws.bundle import load_bundle, sha256_of
from kws.errors import BundleError

from conftest import DEFAULT_MODEL, SHARED, run_kws


@pytest.fixture
def bundle_dir(tmp_path):
    for suffix in (".json", ".tflite"):
        shutil.copy(DEFAULT_MODEL.with_suffix(suffix), tmp_path / f"m{suffix}")
    edit_manifest(tmp_path, lambda m: m.update(tflite="m.tflite"))
    return tmp_path


def edit_manifest(directory, change) -> None:
    path = directory / "m.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def replace_tflite(directory, content: bytes) -> None:
    (directory / "m.tflite").write_bytes(content)
    edit_manifest(directory, lambda m: m.update(sha256=sha256_of(content)))


def test_bundled_model_loads():
    bundle = load_bundle()
    assert bundle.name == "kws12"
    assert bundle.labels[:2] == ("_silence_", "_unknown_")
    assert bundle.keywords == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    assert bundle.input.dtype == "int8" and bundle.output.dtype == "int8"
    assert bundle.input.shape == (1, bundle.window_frames, bundle.features.n_mfcc, 1)
    assert set(bundle.thresholds) == set(bundle.keywords)
    assert bundle.size_bytes == DEFAULT_MODEL.with_suffix(".tflite").stat().st_size
    assert load_bundle(DEFAULT_MODEL.with_suffix(".tflite")).sha256 == bundle.sha256


@pytest.mark.parametrize("manifest", sorted(DEFAULT_MODEL.parent.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_bundle_loads_and_hears_the_test_words(manifest, shared_data):
    from kws.features import Mfcc
    from kws.interpreter import Classifier, make_interpreter

    from conftest import KEYWORD_CLIPS, read_clip

    bundle = load_bundle(manifest)
    classifier = Classifier(make_interpreter(bundle.model_content))
    mfcc = Mfcc(bundle.features)
    window = bundle.features.samples_for(bundle.window_frames)

    def top(audio: np.ndarray) -> str:
        """The top label of the window centred on the clip (zero-padded or cut)."""
        padded = np.zeros(max(window, audio.size), np.float32)
        start = (padded.size - audio.size) // 2
        padded[start : start + audio.size] = audio
        middle = (padded.size - window) // 2
        return bundle.labels[int(np.argmax(classifier.predict(mfcc.compute(padded[middle : middle + window]))))]

    recordings_dir = SHARED / "data" / "wakewords" / bundle.keywords[0]
    if not (len(bundle.keywords) == 1 and recordings_dir.is_dir()):  # a Speech Commands model
        for word, relative in KEYWORD_CLIPS:
            scores = classifier.predict(mfcc.compute(read_clip(relative))[: bundle.window_frames])
            assert bundle.labels[int(np.argmax(scores))] == word, (manifest.name, relative)
        return
    # a wake-word bundle (kws-train custom): none of the test words is its word; its word's recordings are
    (word,) = bundle.keywords
    assert [top(read_clip(relative)) for _, relative in KEYWORD_CLIPS].count(word) == 0, manifest.name
    from kws.record import check_take

    recordings = sorted(recordings_dir.glob("*.ogg"))[:20]
    heard = []
    for path in recordings:
        audio = read_audio(path, bundle.features.sample_rate_hz)
        found = check_take(audio, whole_file=True)
        centre = round(found.speech_centre_s * bundle.features.sample_rate_hz)
        heard.append(top(audio[max(0, centre - window // 2) : centre + window // 2]) == word)
    assert sum(heard) >= 17, (manifest.name, sum(heard))  # 20 recordings, trained on or not


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match=r"model manifest .*nope.json not found"):
        load_bundle(tmp_path / "nope.json")


def test_missing_tflite(bundle_dir):
    (bundle_dir / "m.tflite").unlink()
    with pytest.raises(BundleError, match=r"model file .*m.tflite .* not found"):
        load_bundle(bundle_dir / "m.json")


def test_hash_mismatch(bundle_dir):
    content = bytearray((bundle_dir / "m.tflite").read_bytes())
    content[len(content) // 2] ^= 0xFF
    (bundle_dir / "m.tflite").write_bytes(bytes(content))
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_bundle(bundle_dir / "m.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_tflite_with_matching_hash(bundle_dir, damage):
    content = (bundle_dir / "m.tflite").read_bytes()
    replace_tflite(bundle_dir, {"truncated": content[: len(content) // 3], "garbage": b"\x00kws" * 999,
                                "empty": b""}[damage])
    with pytest.raises(BundleError, match="is not a loadable TFLite model"):
        load_bundle(bundle_dir / "m.json")


def test_labels_do_not_match_output(bundle_dir):
    def drop_label(m):
        m["labels"] = m["labels"][:-1]
        del m["detector"]["thresholds"]["go"]

    edit_manifest(bundle_dir, drop_label)
    with pytest.raises(BundleError, match="11 labels but the output has 12 scores"):
        load_bundle(bundle_dir / "m.json")


def test_feature_settings_the_front_end_cannot_produce(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["features"].update(fmax_hz=12000.0))
    with pytest.raises(BundleError, match="fmax_hz.*Nyquist"):
        load_bundle(bundle_dir / "m.json")
    edit_manifest(bundle_dir, lambda m: m["features"].update(fmax_hz=7600.0, pcen=True))
    with pytest.raises(BundleError, match="unknown feature setting.*pcen"):
        load_bundle(bundle_dir / "m.json")


def test_features_that_do_not_fit_the_input(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["features"].update(n_mfcc=13))
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle(bundle_dir / "m.json")


def test_quantization_differs_from_model(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["input"].update(scale=m["input"]["scale"] * 2))
    with pytest.raises(BundleError, match="input quantization"):
        load_bundle(bundle_dir / "m.json")


def test_invalid_json(bundle_dir):
    (bundle_dir / "m.json").write_text("{ not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(bundle_dir / "m.json")


def test_missing_field_and_bad_threshold(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.pop("window_frames"))
    with pytest.raises(BundleError, match="lacks 'window_frames'"):
        load_bundle(bundle_dir / "m.json")
    shutil.copy(DEFAULT_MODEL, bundle_dir / "m.json")
    edit_manifest(bundle_dir, lambda m: m.update(tflite="m.tflite"))
    edit_manifest(bundle_dir, lambda m: m["detector"]["thresholds"].update(yes=3))
    with pytest.raises(BundleError, match="threshold for 'yes'"):
        load_bundle(bundle_dir / "m.json")


def test_cli_reports_one_line_without_traceback(bundle_dir):
    replace_tflite(bundle_dir, b"\x00" * 100)
    result = run_kws("info", "--model", str(bundle_dir / "m.json"))
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kws: error: model file") and "Traceback" not in lines[0]


def test_atomic_write_replaces_whole_files_with_ordinary_permissions(tmp_path):
    from kws.bundle import atomic_write

    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")
    old_umask = os.umask(0o027)
    try:
        atomic_write(target, b"new contents")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 under the umask, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]  # no temporary left behind
