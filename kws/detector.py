"""From class probabilities to detections: smoothing, thresholds, refractory period.

``Detector`` works on a sequence of probability vectors (one per inference) and
knows nothing about audio; ``KeywordSpotter`` feeds it from audio.
"""

from __future__ import annotations

import datetime
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from kws.bundle import BACKGROUND_PREFIX
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorSettings:
    """How scores become detections. Defaults come from the model bundle."""

    thresholds: Mapping[str, float]
    """Smoothed probability a keyword must reach to fire, per keyword."""
    stride_ms: float = 100.0
    """Audio between two inferences; rounded to whole feature hops."""
    smoothing_s: float = 0.3
    """Probabilities are averaged over the inferences of this span (0 = no smoothing). Until a whole span has
    been heard (after the start or ``reset``), the inferences not yet made count as zero, as if the stream had
    begun after silence: the first window of a stream needs the whole span's evidence, as any other does."""
    refractory_s: float = 1.0
    """After a detection, nothing fires for this long."""
    keywords: tuple[str, ...] | None = None
    """Keywords allowed to fire; None = every keyword of the model."""

    def __post_init__(self) -> None:
        if not self.stride_ms > 0:
            raise ConfigError(f"stride_ms={self.stride_ms}: must be positive")
        if self.smoothing_s < 0 or self.refractory_s < 0:
            raise ConfigError("smoothing_s and refractory_s must not be negative")
        for word, value in self.thresholds.items():
            if not 0 < value <= 1:
                raise ConfigError(f"threshold for '{word}' is {value}: must be in (0, 1]")

    def smoothing_steps(self) -> int:
        return max(1, int(round(self.smoothing_s * 1000 / self.stride_ms)))


@dataclass(frozen=True)
class Detection:
    """One keyword heard."""

    keyword: str
    score: float
    """Smoothed probability when it fired."""
    offset_s: float
    """Position in the stream (end of the window that fired), seconds from its start."""
    model: str
    time: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())

    def to_dict(self) -> dict:
        return {"keyword": self.keyword, "score": round(self.score, 4),
                "time": self.time.isoformat(timespec="milliseconds"),
                "offset_s": round(self.offset_s, 3), "model": self.model}


class Detector:
    """Feed one probability vector per inference; get a detection or None."""

    def __init__(self, labels: Sequence[str], settings: DetectorSettings, model: str = ""):
        allowed = set(settings.keywords) if settings.keywords is not None else None
        unknown = sorted((allowed or set()) - set(labels))
        if unknown:
            raise ConfigError(f"keyword(s) {', '.join(unknown)} not in the model; it knows "
                              f"{', '.join(x for x in labels if not x.startswith(BACKGROUND_PREFIX))}")
        self.labels = tuple(labels)
        self.settings = settings
        self.model = model
        self._fire = [
            i for i, label in enumerate(labels)
            if not label.startswith(BACKGROUND_PREFIX) and (allowed is None or label in allowed)
        ]
        missing = [self.labels[i] for i in self._fire if self.labels[i] not in settings.thresholds]
        if missing:
            raise ConfigError(f"no threshold for keyword(s) {', '.join(missing)}")
        self._thresholds = np.array([settings.thresholds[self.labels[i]] for i in self._fire], np.float32)
        self._history: deque[np.ndarray] = deque(maxlen=settings.smoothing_steps())
        self._armed = np.ones(len(self._fire), bool)
        self._last_fire_s = -np.inf

    def reset(self) -> None:
        self._history.clear()
        self._armed[:] = True
        self._last_fire_s = -np.inf

    def process(self, probabilities: np.ndarray, offset_s: float) -> Detection | None:
        return self.decide(self.smooth(probabilities), offset_s)

    def smooth(self, probabilities: np.ndarray) -> np.ndarray:
        """Add one inference's probabilities to the history; the smoothed scores of every label.

        The sum over the history divided by the whole span (``smoothing_steps``): inferences before the
        start count as zero."""
        self._history.append(np.asarray(probabilities, np.float32))
        return np.sum(self._history, axis=0) / np.float32(self._history.maxlen)

    def decide(self, smoothed: np.ndarray, offset_s: float) -> Detection | None:
        """Thresholds, re-arming and the refractory period on one inference's smoothed scores (every label).

        ``process`` is ``smooth`` then ``decide``. A step where no keyword reaches its
        threshold only re-arms every keyword, so a replay of stored scores may skip all
        but the first of a run of such steps and still decide exactly as ``process``.
        """
        smoothed = np.asarray(smoothed, np.float32)[self._fire]
        above = smoothed >= self._thresholds
        # A keyword re-arms once its score falls below its threshold, so one
        # long utterance cannot fire twice even after the refractory period.
        self._armed |= ~above
        candidates = above & self._armed
        if not candidates.any() or offset_s - self._last_fire_s < self.settings.refractory_s:
            return None
        best = int(np.argmax(np.where(candidates, smoothed, -1.0)))
        self._armed[best] = False
        self._last_fire_s = offset_s
        return Detection(self.labels[self._fire[best]], float(smoothed[best]), float(offset_s), self.model)
