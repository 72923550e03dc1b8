"""Distillation: teacher soft targets, computed once per augmented clip and cached.

The student's loss is ``hard_weight * CE(labels, student) + soft_weight * T^2 *
CE(teacher_T, student_T)``, where ``_T`` means softened at temperature ``T``
(teacher probabilities ``p`` become ``p^(1/T)``, renormalised; student logits
are divided by ``T``).

Teachers are slow (several ms per clip for an ensemble), so ``TargetCache``
renders ``cached_epochs`` augmented epochs once, each with its features, labels
and the teacher's probabilities, and stores them under a key of everything that
decides them. Student epochs cycle through the cache; a second student with
other loss weights, temperature or architecture reuses it for free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    """Knowledge distillation from a teacher (or an ensemble) into the student."""

    teacher: str = ""
    """Teacher spec for ``training.teachers.load_teacher``: a name, ``run:PATH``, or a comma-separated
    list (an equal-weight ensemble). Empty = no distillation."""
    temperature: float = 2.0
    """Softening of teacher and student distributions in the soft loss."""
    hard_weight: float = 0.5
    """Weight of cross-entropy with the true labels."""
    soft_weight: float = 0.5
    """Weight of cross-entropy with the teacher's softened targets (scaled by T^2)."""
    cached_epochs: int = 20
    """Distinct augmented epochs rendered with teacher targets; student epochs cycle through them."""
    label_only: tuple[str, ...] = ()
    """Classes the teachers are not trusted on (e.g. ``_silence_``, whose loud-noise examples they never
    heard): for their examples the soft target is the label itself."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_only", tuple(self.label_only))
        if self.temperature <= 0 or self.hard_weight < 0 or self.soft_weight < 0 or self.cached_epochs < 1:
            raise ValueError("distill: temperature > 0, weights >= 0 and cached_epochs >= 1 are required")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher) and self.soft_weight > 0


def trust_labels(targets: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``targets`` with the rows of examples labelled one of ``classes`` replaced by the one-hot label."""
    chosen = np.isin(labels, list(classes))
    if not chosen.any():
        return targets
    out = targets.copy()
    out[chosen] = 0
    out[np.flatnonzero(chosen), labels[chosen]] = 1
    return out


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``p^(1/T)``, renormalised: the softmax of ``log p / T``."""
    logp = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


SPEC_AUGMENT_FIELDS = ("time_masks", "time_mask_frames", "frequency_masks", "frequency_mask_bins")


def augment_key(augment) -> dict:
    """The augmentation settings that decide cached audio: SpecAugment (applied to the student's
    input after the cache) and parts switched off are left out, so adding an option that is off
    does not invalidate caches."""
    key = {k: v for k, v in dataclasses.asdict(augment).items() if k not in SPEC_AUGMENT_FIELDS}
    if not augment.speed_probability:
        key.pop("speed_probability"), key.pop("speed_range")
    if not augment.reverb_probability:
        key.pop("reverb_probability")
    return key


def corpus_fingerprint(corpus) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(corpus.label).tobytes())
    digest.update(np.ascontiguousarray(corpus.audio[:, ::251]).tobytes())
    digest.update(repr([(len(n), float(n[:1000].sum())) for n in corpus.noise]).encode())
    if corpus.responses:  # (absent from keys made before reverb existed, so those caches stay valid)
        digest.update(repr([(len(r), float(r[:1000].sum())) for r in corpus.responses]).encode())
    return digest.hexdigest()[:16]


class TargetCache:
    """Augmented epochs with each teacher's targets, on disk under ``DIR/<key>/``.

    ``epoch_NNN.npz`` holds one augmented epoch's features and labels;
    ``epoch_NNN.<member>.npy`` holds one ensemble member's probabilities for it.
    Members are stored apart, so adding a teacher to an ensemble computes only
    the new one's targets. A ``run:PATH`` member's file name includes the size
    and time of its ``model.keras``, so a retrained teacher is asked again.
    """

    def __init__(self, maker, settings, directory: Path, teacher=None):
        """``maker`` is an ``EpochMaker``; ``settings`` the ``TrainSettings`` (with ``distill``);
        ``teacher`` (optional) replaces loading ``settings.distill.teacher`` by name."""
        self.maker = maker
        self.settings = settings
        self.distill: DistillSettings = settings.distill
        if teacher is None:
            from training.teachers import teacher_names

            self.members = [Member(name) for name in teacher_names(self.distill.teacher)]
        else:
            self.members = [Member(t.name, t) for t in getattr(teacher, "teachers", [teacher])]
        key = {
            "features": settings.features.to_dict(), "augment": augment_key(settings.augment),
            "per_class": maker.per_class, "seed": settings.seed, "corpus": corpus_fingerprint(maker.corpus),
            "format": 2,
        }
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(directory) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")

    def path(self, index: int) -> Path:
        return self.dir / f"epoch_{index % self.distill.cached_epochs:03d}.npz"

    def get(self, epoch: int, timer=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, label indices and the (mean) teacher probabilities of student epoch ``epoch``."""
        from training.timing import StageTimer

        timer = timer or StageTimer()
        index = epoch % self.distill.cached_epochs
        path = self.path(epoch)
        missing = [m for m in self.members if not self._target_path(index, m).is_file()]
        audio = None
        if missing or not path.is_file():
            rng = np.random.default_rng([self.settings.seed, index])
            with timer.stage("features + augmentation (prefetch)"):
                audio, labels = self.maker.epoch_audio(rng)
                if not path.is_file():
                    features = self.maker.mfcc.compute_batch(audio)
                    _atomic_save(path, lambda f: np.savez(f, features=features, labels=labels))
        with np.load(path) as stored:
            features, labels = stored["features"], stored["labels"]
        total = None
        for member in self.members:
            target_path = self._target_path(index, member)
            if not target_path.is_file():
                _LOGGER.info("teacher %s: targets for cached epoch %d (%d clips)", member.name, index, len(audio))
                with timer.stage("teacher targets"):
                    targets = np.asarray(member.teacher.predict(audio), np.float32)
                if targets.shape[0] != len(labels):
                    raise RuntimeError(f"teacher {member.name} gave {targets.shape[0]} rows for {len(labels)} clips")
                _atomic_save(target_path, lambda f: np.save(f, targets))
            targets = np.load(target_path).astype(np.float64)
            total = targets if total is None else total + targets
        mean = total / len(self.members)
        mean /= mean.sum(axis=1, keepdims=True)
        return features, labels, mean.astype(np.float32)

    def _target_path(self, index: int, member: "Member") -> Path:
        return self.dir / f"epoch_{index:03d}.{member.file_id}.npy"


class Member:
    """One teacher of an ensemble, loaded by name only when its targets are needed."""

    def __init__(self, name: str, teacher=None):
        self.name = name
        self._teacher = teacher
        identity = name
        if name.startswith("run:"):
            model = Path(name[len("run:"):]) / "model.keras"
            if model.is_file():
                stat = model.stat()
                identity += f"|{stat.st_size}|{stat.st_mtime_ns}"
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[-40:]
        self.file_id = f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"

    @property
    def teacher(self):
        if self._teacher is None:
            from training.teachers import load_teacher

            self._teacher = load_teacher(self.name)
        return self._teacher


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)
