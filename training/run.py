"""A training run folder and the steps that fill it: train, quantize, evaluate, export.

``RUN/settings.json``  what was trained on and how (reproduces the run)
``RUN/model.keras``    best float checkpoint by validation accuracy
``RUN/history.json``, ``RUN/curve.png``
``RUN/model_int8.tflite``
``RUN/evaluation.json``, ``RUN/confusion_<set>_<float|int8>.png``
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import kws
from kws.bundle import atomic_write, write_bundle
from kws.features import Mfcc
from training import data
from training.evaluate import predict_float, predict_tflite, report, save_confusion, score
from training.timing import StageTimer
from training.train import Corpus, EpochMaker, TrainSettings, load_corpus, train

_LOGGER = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.7
DEFAULT_SMOOTHING_S = 0.3
DEFAULT_REFRACTORY_S = 1.0


@dataclass(frozen=True)
class DataSettings:
    """Where the audio comes from."""

    root: Path
    """A Speech Commands folder in the official layout."""
    extra: tuple[Path, ...] = ()
    """Extra ``<word>/*`` folders added to the training split (e.g. synthetic speech)."""
    cache_dir: Path | None = None
    """Where decoded audio is cached between runs; None = no cache."""
    noise: tuple[Path, ...] = ()
    """Extra folders of noise recordings, used with ``_background_noise_``."""
    rir: tuple[Path, ...] = ()
    """Folders of room impulse responses, for the reverb augmentation."""

    def to_dict(self) -> dict:
        return {"root": str(self.root), "extra": [str(p) for p in self.extra],
                "cache_dir": str(self.cache_dir) if self.cache_dir else None, "noise": [str(p) for p in self.noise],
                "rir": [str(p) for p in self.rir]}

    @classmethod
    def from_dict(cls, values: dict) -> "DataSettings":
        return cls(Path(values["root"]), tuple(Path(p) for p in values.get("extra", ())),
                   Path(values["cache_dir"]) if values.get("cache_dir") else None,
                   tuple(Path(p) for p in values.get("noise", ())), tuple(Path(p) for p in values.get("rir", ())))


class Run:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @property
    def settings_path(self) -> Path:
        return self.dir / "settings.json"

    def save_settings(self, train_settings: TrainSettings, data_settings: DataSettings) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {"train": train_settings.to_dict(), "data": data_settings.to_dict(), "labels": list(data.LABELS),
                "kws_version": kws.__version__}
        atomic_write(self.settings_path, (json.dumps(body, indent=2) + "\n").encode())

    def load_settings(self) -> tuple[TrainSettings, DataSettings]:
        if not self.settings_path.is_file():
            raise data.DataError(f"{self.dir} is not a training run (no settings.json): run kws-train train first")
        body = json.loads(self.settings_path.read_text())
        if body.get("kind") == "custom":
            raise data.DataError(f"{self.dir} is a wake-word run of kws-train custom, which quantizes, evaluates and "
                                 "exports itself: run kws-train custom again (e.g. --config RUN/settings.json)")
        return TrainSettings.from_dict(body["train"]), DataSettings.from_dict(body["data"])

    def need(self, name: str, step: str) -> Path:
        path = self.dir / name
        if not path.is_file():
            raise data.DataError(f"{path} not found: run kws-train {step} {self.dir} first")
        return path

    def load_keras(self):
        import keras

        return keras.models.load_model(self.need("model.keras", "train"))

    def evaluation(self) -> dict:
        path = self.dir / "evaluation.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def step_train(run: Run, train_settings: TrainSettings, data_settings: DataSettings, timer: StageTimer) -> None:
    run.save_settings(train_settings, data_settings)
    corpus = load_corpus(data_settings, timer)
    target_dir = data_settings.cache_dir / "targets" if data_settings.cache_dir else None
    train(corpus, train_settings, run.dir, timer, target_dir=target_dir)


def _corpus(run: Run, timer: StageTimer) -> tuple[TrainSettings, Corpus]:
    train_settings, data_settings = run.load_settings()
    return train_settings, load_corpus(data_settings, timer)


def step_quantize(run: Run, timer: StageTimer, representative: int = 500) -> Path:
    from training.quantize import quantize_int8

    train_settings, corpus = _corpus(run, timer)
    model = run.load_keras()
    with timer.stage("features (representative)"):
        per_class = max(1, -(-representative // len(corpus.labels)))
        maker = EpochMaker(corpus, dataclasses.replace(train_settings, clips_per_class=per_class))
        windows, _ = maker.epoch(np.random.default_rng(train_settings.seed + 1))
        windows = windows[:representative]
    with timer.stage("quantize"):
        content = quantize_int8(model, windows, train_settings.features)
    path = run.dir / "model_int8.tflite"
    atomic_write(path, content)
    _LOGGER.info("wrote %s (%d bytes)", path, len(content))
    return path


def step_evaluate(run: Run, tests: Sequence[Path], timer: StageTimer) -> dict:
    train_settings, corpus = _corpus(run, timer)
    cache_dir = run.load_settings()[1].cache_dir
    model = run.load_keras()
    content = run.need("model_int8.tflite", "quantize").read_bytes()
    sets = {}
    with timer.stage("features (evaluation)"):
        sets["validation"] = EpochMaker(corpus, train_settings).validation()
        mfcc = Mfcc(train_settings.features)
        for folder in tests:
            audio, truth = data.load_test_folder(folder, cache_dir)
            sets[Path(folder).name] = (mfcc.compute_batch(audio), truth)
    results = run.evaluation()
    for name, (features, truth) in sets.items():
        entry = {}
        for kind, predict in (("float", lambda f: predict_float(model, f)),
                              ("int8", lambda f: predict_tflite(content, f))):
            with timer.stage(f"evaluate {kind}"):
                scores = score(data.LABELS, truth, predict(features).argmax(axis=1))
            print(report(f"{name} {kind}", scores))
            save_confusion(scores, f"{name}, {kind}: accuracy {scores.accuracy:.4f}", run.dir / f"confusion_{name}_{kind}.png")
            entry[kind] = scores.to_dict()
        results[name] = entry
    atomic_write(run.dir / "evaluation.json", (json.dumps(results, indent=1) + "\n").encode())
    return results


def step_export(run: Run, name: str, out_dir: Path, threshold: float = DEFAULT_THRESHOLD) -> Path:
    from training.models import count_macs

    train_settings, data_settings = run.load_settings()
    model = run.load_keras()
    content = run.need("model_int8.tflite", "quantize").read_bytes()
    from kws.interpreter import make_interpreter

    interpreter = make_interpreter(content)
    tensors = {"input": interpreter.get_input_details()[0], "output": interpreter.get_output_details()[0]}
    frames = train_settings.features.frames_for(data.CLIP_SAMPLES)
    evaluation = run.evaluation()
    manifest = {
        "description": f"{train_settings.architecture} keyword spotter, 12 classes (Speech Commands task), int8",
        "labels": list(data.LABELS),
        "features": train_settings.features.to_dict(),
        "window_frames": frames,
        "input": _tensor_spec(tensors["input"]),
        "output": _tensor_spec(tensors["output"]),
        "detector": {
            "thresholds": {word: threshold for word in data.KEYWORDS},
            "smoothing_s": DEFAULT_SMOOTHING_S,
            "refractory_s": DEFAULT_REFRACTORY_S,
        },
        "architecture": train_settings.architecture,
        "parameters": int(model.count_params()),
        "macs": count_macs(model),
        "training": {
            "data": data_settings.to_dict(),
            "settings": train_settings.to_dict(),
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()} {platform.python_version()}",
            "kws_version": kws.__version__,
        },
        "metrics": {name_: {kind: {"accuracy": body[kind]["accuracy"], "clips": body[kind]["clips"]}
                            for kind in body} for name_, body in evaluation.items()},
    }
    path = write_bundle(out_dir, name, content, manifest)
    _LOGGER.info("exported %s", path)
    return path


def _tensor_spec(details: dict) -> dict:
    scale, zero = details["quantization"]
    return {"shape": [int(d) for d in details["shape"]], "dtype": details["dtype"].__name__,
            "scale": float(scale), "zero_point": int(zero)}
