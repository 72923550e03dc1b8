"""Accuracy, per-class recall and confusion matrices for the float and int8 models."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.interpreter import Classifier, make_interpreter

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    labels: tuple[str, ...]
    confusion: np.ndarray
    """``confusion[true, predicted]`` counts."""

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def recall(self) -> dict[str, float]:
        totals = self.confusion.sum(axis=1)
        return {label: float(self.confusion[i, i] / totals[i]) if totals[i] else float("nan")
                for i, label in enumerate(self.labels)}

    def to_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 5), "clips": int(self.confusion.sum()),
                "recall": {k: round(v, 4) for k, v in self.recall.items()},
                "confusion": self.confusion.tolist()}


def score(labels: Sequence[str], truth: np.ndarray, predicted: np.ndarray) -> Scores:
    n = len(labels)
    confusion = np.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
    return Scores(tuple(labels), confusion)


def predict_float(model, features: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The Keras ``model``'s outputs for ``features`` ``(n, frames, coefficients)``, ``batch_size`` rows at a time.

    Through ``predict_on_batch``, not ``predict``: ``predict`` builds a tf.data iterator per call, whose
    teardown can leave the CPU idle for seconds (see ``training.train.fit_epoch``).
    """
    x = features[..., None]
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(x[start : start + batch_size]))
                           for start in range(0, len(x), batch_size)])


def predict_tflite(model_content: bytes, features: np.ndarray) -> np.ndarray:
    """Class probabilities from a ``.tflite`` through the runtime's own classifier."""
    classifier = Classifier(make_interpreter(model_content))
    return np.stack([classifier.predict(window) for window in features])


def report(name: str, scores: Scores) -> str:
    recall = "  ".join(f"{k} {v:.3f}" for k, v in scores.recall.items())
    return f"{name}: accuracy {scores.accuracy:.4f} on {int(scores.confusion.sum())} clips\n  recall: {recall}"


def save_confusion(scores: Scores, title: str, path: Path) -> None:
    from training.plots import plot_confusion

    plot_confusion(scores.confusion, scores.labels, title, path)
