"""Training a DS-CNN on the 12-class Speech Commands task."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.features import FeatureSettings, Mfcc
from training import data
from training.distill import DistillSettings, soften, trust_labels
from training.augment import AugmentSettings, augment, random_noise_cuts, silence_levels, spec_augment
from training.evaluate import predict_float
from training.timing import StageTimer

_LOGGER = logging.getLogger(__name__)


KEEP_CHOICES = ("best", "last")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a trained model, besides the data."""

    architecture: str = "ds-cnn-s"
    """A name from ``training.models.REGISTRY``."""
    epochs: int = 40
    batch_size: int = 100
    learning_rate: float = 0.002
    """Peak of the cosine schedule."""
    label_smoothing: float = 0.05
    clips_per_class: int = 0
    """Examples of each class per epoch (balanced sampling); 0 = the mean keyword count."""
    validation_silence: int = 300
    """Number of fixed ``_silence_`` examples in the validation split."""
    seed: int = 0
    keep: str = "best"
    """Which epoch's weights training returns: ``best`` (validation accuracy, the first epoch to reach its top)
    or ``last`` (the end of the cosine schedule)."""
    features: FeatureSettings = field(default_factory=FeatureSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def __post_init__(self) -> None:
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {self.keep!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        values = dict(values)
        values["features"] = FeatureSettings(**values.get("features", {}))
        values["augment"] = AugmentSettings(**values.get("augment", {}))
        values["distill"] = DistillSettings(**values.get("distill", {}))
        return cls(**values)


@dataclass
class Corpus:
    """Decoded clips with their label index and split; ``_silence_`` comes from ``noise``."""

    audio: np.ndarray
    label: np.ndarray
    split: np.ndarray
    noise: list
    labels: tuple = data.LABELS
    responses: list = dataclasses.field(default_factory=list)
    """Room impulse responses for reverberation."""

    def indices(self, split: str, label: int) -> np.ndarray:
        return np.flatnonzero((self.split == split) & (self.label == label))


def load_corpus(settings, timer: StageTimer | None = None) -> Corpus:
    """The clips and noise that ``settings`` (a ``training.run.DataSettings``) names.

    A Speech Commands root, plus extra ``<word>/*`` folders (training split only),
    plus extra noise folders.
    """
    timer = timer or StageTimer()
    root, extra, cache_dir = settings.root, settings.extra, settings.cache_dir
    with timer.stage("scan"):
        clips = data.scan_speech_commands(root)
        for folder in extra:
            extra_clips = data.scan_labelled_folder(folder, split="training")
            _LOGGER.info("%s: %d extra training clips", folder, len(extra_clips))
            clips += extra_clips
        clips = [c for c in clips if c.split != "testing"]
    with timer.stage("decode audio"):
        audio = data.decode_clips([c.path for c in clips], cache_dir)
        noise_paths = data.noise_files(root)
        for folder in settings.noise:
            noise_paths += data.audio_files(Path(folder))
        noise = data.load_noise(noise_paths)
        responses = data.load_noise([p for folder in settings.rir for p in data.audio_files(Path(folder))])
    if not noise:
        _LOGGER.warning("%s has no %s/: _silence_ examples will be digital silence", root, data.NOISE_DIR)
    label = np.array([data.LABELS.index(c.label()) for c in clips], np.int64)
    split = np.array([c.split for c in clips])
    return Corpus(audio, label, split, noise, responses=responses)


class EpochMaker:
    """Balanced, augmented epochs of features."""

    def __init__(self, corpus: Corpus, settings: TrainSettings):
        self.corpus = corpus
        self.settings = settings
        self.mfcc = Mfcc(settings.features)
        self.silence = corpus.labels.index(data.SILENCE)
        self.by_class = [corpus.indices("training", k) for k in range(len(corpus.labels))]
        keyword_counts = [len(self.by_class[k]) for k, name in enumerate(corpus.labels) if not name.startswith("_")]
        self.per_class = settings.clips_per_class or int(np.mean(keyword_counts))
        for k, name in enumerate(corpus.labels):
            if k != self.silence and len(self.by_class[k]) == 0:
                raise data.DataError(f"no training clips for '{name}'")

    def epoch_audio(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One balanced, shuffled, augmented epoch: float32 audio ``(n, samples)`` and label indices."""
        rows, labels = [], []
        for k in range(len(self.by_class)):
            if k == self.silence:
                rows.append(np.full(self.count(k), -1))
            else:
                rows.append(self.draw(k, rng))
            labels.append(np.full(self.count(k), k))
        rows, labels = np.concatenate(rows), np.concatenate(labels)
        order = rng.permutation(len(rows))
        rows, labels = rows[order], labels[order]
        is_silence = rows < 0
        audio = self.corpus.audio[np.where(is_silence, 0, rows)]
        x = augment(audio, is_silence, self.corpus.noise, self.settings.augment,
                    self.settings.features.sample_rate_hz, rng, self.corpus.responses)
        return x, labels

    def count(self, k: int) -> int:
        """Examples of class ``k`` in an epoch."""
        return self.per_class

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``count(k)`` training rows of class ``k`` for one epoch (with replacement only if it has fewer)."""
        pool, count = self.by_class[k], self.count(k)
        return rng.choice(pool, count, replace=len(pool) < count)

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One epoch as features ``(n, frames, coefficients)`` and label indices."""
        audio, labels = self.epoch_audio(rng)
        return self.mfcc.compute_batch(audio), labels

    def validation_audio(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed validation set: the validation split plus seeded noise cuts as ``_silence_``."""
        rng = np.random.default_rng(12345)
        rows = np.flatnonzero(self.corpus.split == "validation")
        x = self.corpus.audio[rows].astype(np.float32) / 32768.0
        count = self.settings.validation_silence
        cuts = random_noise_cuts(self.corpus.noise, count, x.shape[1], rng)
        cuts *= silence_levels(count, self.settings.augment, rng)[:, None]
        x = np.concatenate([x, cuts])
        y = np.concatenate([self.corpus.label[rows], np.full(count, self.silence)])
        return x, y

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        audio, labels = self.validation_audio()
        return self.mfcc.compute_batch(audio), labels


def make_loss(n_classes: int, label_smoothing: float, distill: DistillSettings):
    """Loss on logits; ``y_true`` holds one-hot labels, then (when distilling) softened teacher targets."""
    import keras
    from keras import ops

    temperature = distill.temperature
    hard_weight, soft_weight = (distill.hard_weight, distill.soft_weight) if distill.enabled else (1.0, 0.0)

    def loss(y_true, logits):
        hard = keras.losses.categorical_crossentropy(
            y_true[:, :n_classes], logits, from_logits=True, label_smoothing=label_smoothing)
        if soft_weight == 0:
            return hard
        soft = keras.losses.categorical_crossentropy(y_true[:, n_classes:], logits / temperature, from_logits=True)
        return hard_weight * hard + soft_weight * temperature**2 * soft

    def accuracy(y_true, logits):
        return ops.cast(ops.equal(ops.argmax(y_true[:, :n_classes], axis=1), ops.argmax(logits, axis=1)), "float32")

    return loss, accuracy


def fit_epoch(model, x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator) -> dict[str, float]:
    """One epoch of the compiled ``model`` on ``x``, ``y`` in an order from ``rng``, ``batch_size`` rows a step.

    Returns the epoch's metrics (``loss`` and the compiled ones), the means over its examples, as ``fit``'s
    history holds them. ``fit`` itself builds a tf.data iterator per call, and tearing it down waited on a
    sleeping tf.data thread: with TensorFlow 2.21 each 42-s epoch of ``kws-train custom`` left both cores idle
    for about 17 s (measured 2026-12-07). ``train_on_batch`` feeds the same compiled step without tf.data.
    """
    order = rng.permutation(len(x))
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        rows = order[start : start + batch_size]
        model.reset_metrics()  # each step's logs are its batch's own, whichever way Keras keeps them
        for name, value in model.train_on_batch(x[rows], y[rows], return_dict=True).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(rows)
    return {name: total / len(x) for name, total in totals.items()}


class FreshEpochs:
    """Plain training: a new augmented epoch each time, from one seeded generator."""

    def __init__(self, maker: EpochMaker, seed: int):
        self.maker = maker
        self.rng = np.random.default_rng(seed)

    def get(self, epoch: int, timer=None):
        timer = timer or StageTimer()
        with timer.stage("features + augmentation (prefetch)"):
            features, labels = self.maker.epoch(self.rng)
        return features, labels, None


def train(corpus: Corpus, settings: TrainSettings, run_dir: Path, timer: StageTimer | None = None,
          target_dir: Path | None = None, teacher=None, maker: EpochMaker | None = None, prepare_model=None):
    """Train; returns the Keras model of the epoch ``settings.keep`` names (best validation accuracy, or the last).

    With ``settings.distill`` enabled, soft targets come from a ``TargetCache`` in
    ``target_dir`` (default ``run_dir/targets``); ``teacher`` overrides loading it by name.
    ``maker`` replaces the default ``EpochMaker(corpus, settings)``; ``prepare_model(model)``
    runs on the freshly built model before it is compiled (e.g. to load and freeze weights).
    The model's window is the corpus's clip length.
    """
    import keras

    from training.models import build_model, count_macs, logits_model
    from training.plots import plot_history

    timer = timer or StageTimer()
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)
    maker = maker if maker is not None else EpochMaker(corpus, settings)
    with timer.stage("features (validation)"):
        x_val, y_val = maker.validation()
    if settings.distill.enabled:
        from training.distill import TargetCache

        source = TargetCache(maker, settings, target_dir or run_dir / "targets", teacher)
        _LOGGER.info("distilling from %s (T=%g, hard %g, soft %g); targets in %s", settings.distill.teacher,
                     settings.distill.temperature, settings.distill.hard_weight, settings.distill.soft_weight,
                     source.dir)
    else:
        source = FreshEpochs(maker, settings.seed)
    n_classes = len(corpus.labels)
    frames = settings.features.frames_for(corpus.audio.shape[1])
    model = build_model(settings.architecture, (frames, settings.features.n_mfcc), n_classes)
    if prepare_model is not None:
        prepare_model(model)
    trainable = logits_model(model)
    steps = settings.epochs * int(np.ceil(maker.per_class * n_classes / settings.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=settings.learning_rate, warmup_steps=max(1, steps // 20))
    loss, accuracy = make_loss(n_classes, settings.label_smoothing, settings.distill)
    trainable.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[accuracy])
    _LOGGER.info("%s: %d parameters, %d MACs; %d examples per class per epoch",
                 settings.architecture, model.count_params(), count_macs(model), maker.per_class)
    eye = np.eye(n_classes, dtype=np.float32)
    unknown = [c for c in settings.distill.label_only if c not in corpus.labels]
    if unknown:
        raise ValueError(f"distill label_only: no class {', '.join(unknown)} (classes: {', '.join(corpus.labels)})")
    label_only = [corpus.labels.index(c) for c in settings.distill.label_only]
    best = -1.0
    history: list[dict] = []
    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(source.get, 0, timer)
        for epoch in range(settings.epochs):
            with timer.stage("waiting for epoch data"):  # made on a second thread while fit runs
                x, y, targets = upcoming.result()
            if epoch + 1 < settings.epochs:
                upcoming = pool.submit(source.get, epoch + 1, timer)
            x = spec_augment(x, settings.augment, np.random.default_rng([settings.seed, epoch, 1]))
            y_true = eye[y] if targets is None else np.concatenate(
                [eye[y], soften(trust_labels(targets, y, label_only), settings.distill.temperature)], axis=1)
            with timer.stage("fit"):
                fit = fit_epoch(trainable, x[..., None], y_true, settings.batch_size,
                                np.random.default_rng([settings.seed, epoch, 2]))
            with timer.stage("validation"):
                probabilities = predict_float(model, x_val)
                val_acc = float(np.mean(probabilities.argmax(axis=1) == y_val))
                val_loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(y_val)), y_val], 1e-7, 1))))
            row = {"epoch": epoch + 1, "loss": fit["loss"], "accuracy": fit["accuracy"], "val_loss": val_loss,
                   "val_accuracy": val_acc}
            history.append(row)
            marker = ""
            kept = val_acc > best if settings.keep == "best" else epoch + 1 == settings.epochs
            best = max(best, val_acc)
            if kept:
                with timer.stage("checkpoint"):
                    model.save(run_dir / "model.keras.tmp.keras")
                    os.replace(run_dir / "model.keras.tmp.keras", run_dir / "model.keras")
                marker = f"  ({settings.keep}, saved)"
            _LOGGER.info("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f%s", epoch + 1,
                         settings.epochs, row["loss"], row["accuracy"], val_loss, val_acc, marker)
            (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    plot_history(history, run_dir / "curve.png")
    _LOGGER.info("best validation accuracy %.4f", best)
    return keras.models.load_model(run_dir / "model.keras")
