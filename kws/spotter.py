"""Audio in, detections out: features, a window of frames, the classifier every stride, the detector.

A ``ModelHead`` is one model on a stream of feature frames (its window,
interpreter, detector). A ``FrontEnd`` computes the frames once for every head
whose bundle has the same ``FeatureSettings``. ``MultiSpotter`` feeds audio to
its front ends; ``KeywordSpotter`` is the one-model case.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from kws.bundle import Bundle
from kws.detector import Detection, Detector, DetectorSettings
from kws.errors import ConfigError
from kws.features import FeatureSettings, Mfcc
from kws.interpreter import Classifier, make_interpreter

_LOGGER = logging.getLogger(__name__)


def detector_settings_for(bundle: Bundle, **overrides) -> DetectorSettings:
    """The bundle's detector defaults, with any non-None ``overrides`` applied."""
    values = {"thresholds": dict(bundle.thresholds), "smoothing_s": bundle.smoothing_s,
              "refractory_s": bundle.refractory_s}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DetectorSettings(**values)


def stride_frames_for(features: FeatureSettings, stride_ms: float) -> int:
    """Feature hops between two inferences: ``stride_ms`` rounded to whole hops, at least one."""
    return max(1, int(round(stride_ms / features.hop_ms)))


class ModelHead:
    """One model on a stream of feature frames: ``feed_frames`` the new frames, get detections."""

    def __init__(self, bundle: Bundle, settings: DetectorSettings, num_threads: int = 1):
        self.bundle = bundle
        self.settings = settings
        self.classifier = Classifier(make_interpreter(bundle.model_content, num_threads))
        self.detector = Detector(bundle.labels, settings, bundle.name)
        hop_ms = bundle.features.hop_ms
        self.stride_frames = stride_frames_for(bundle.features, settings.stride_ms)
        if abs(self.stride_frames * hop_ms - settings.stride_ms) > 1e-6:
            _LOGGER.info("stride %.1f ms rounded to %d feature hops (%.1f ms)", settings.stride_ms,
                         self.stride_frames, self.stride_frames * hop_ms)
        # The window is the last ``window_frames`` rows before ``_end`` of a longer buffer:
        # new frames are written after it, and it is moved back to the start only when the
        # buffer is full, so a frame costs no shift of the whole window.
        window = bundle.window_frames
        self._frames = np.zeros((2 * window + self.stride_frames, bundle.features.n_mfcc), np.float32)
        self._end = window
        self._frames_seen = 0
        self._since_inference = 0
        self.last_probabilities: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def stride_s(self) -> float:
        return self.stride_frames * self.bundle.features.hop_ms / 1000

    def reset(self) -> None:
        self.detector.reset()
        self._frames[:] = 0
        self._end = self.bundle.window_frames
        self._frames_seen = 0
        self._since_inference = 0

    def _frame_end_s(self) -> float:
        f = self.bundle.features
        return f.samples_for(self._frames_seen) / f.sample_rate_hz

    @property
    def frames_until_inference(self) -> int:
        """New frames this head needs before its next inference (at least 1)."""
        return max(1, self.bundle.window_frames - self._frames_seen, self.stride_frames - self._since_inference)

    def feed_frames(self, frames: np.ndarray) -> list[Detection]:
        detections = []
        window = self.bundle.window_frames
        done = 0
        while done < len(frames):
            count = min(len(frames) - done, self.frames_until_inference)
            if self._end + count > len(self._frames):
                self._frames[:window] = self._frames[self._end - window : self._end]
                self._end = window
            self._frames[self._end : self._end + count] = frames[done : done + count]
            self._end += count
            done += count
            self._frames_seen += count
            self._since_inference += count
            if self._frames_seen >= window and self._since_inference >= self.stride_frames:
                self._since_inference = 0
                self.last_probabilities = self.classifier.predict(self._frames[self._end - window : self._end])
                detection = self.detector.process(self.last_probabilities, self._frame_end_s())
                if detection is not None:
                    _LOGGER.debug("%s detected %s %.3f at %.2f s", self.name, detection.keyword, detection.score,
                                  detection.offset_s)
                    detections.append(detection)
        return detections


class FrontEnd:
    """One streaming MFCC for every head that shares these feature settings; each frame is computed once,
    when the first of the heads needs it for an inference."""

    def __init__(self, settings: FeatureSettings, heads: Sequence[ModelHead]):
        self.settings = settings
        self.heads = list(heads)
        self.stream = Mfcc(settings).stream()
        self.frames_computed = 0
        """Feature frames computed since the start (or ``reset``)."""
        self._due_samples = 0
        self._plan()

    def _plan(self) -> None:
        """Buffered samples at which the first head has an inference due (called when the buffer holds no
        whole frame: after ``take`` and at the start)."""
        self._due_samples = self.settings.samples_for(min(head.frames_until_inference for head in self.heads))

    def feed(self, audio: np.ndarray) -> list[Detection]:
        """Buffer ``audio``; the frames are computed (all at once) only when a head has an inference due."""
        self.stream.push(audio)
        if self.stream.buffered_samples < self._due_samples:
            return []
        frames = self.stream.take()
        self.frames_computed += len(frames)
        detections = [d for head in self.heads for d in head.feed_frames(frames)]
        self._plan()
        return detections

    def reset(self) -> None:
        self.stream.reset()
        self.frames_computed = 0
        for head in self.heads:
            head.reset()
        self._plan()

    def close(self) -> None:
        self.stream.close()


class MultiSpotter:
    """``feed`` float32 chunks at the models' sample rate, of any size; get the detections of every model.

    Heads whose bundles have equal feature settings share one front end. The
    detections of one chunk come out in stream order.
    """

    def __init__(self, heads: Sequence[ModelHead]):
        if not heads:
            raise ValueError("a spotter needs at least one model")
        names = [head.name for head in heads]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"model {', '.join(twice)} given twice: give each model once "
                              "(a copy of a bundle needs a name of its own in its .json)")
        rates = {head.bundle.features.sample_rate_hz for head in heads}
        if len(rates) > 1:
            raise ConfigError("the models take audio at different sample rates ("
                              + ", ".join(f"{h.name} {h.bundle.features.sample_rate_hz} Hz" for h in heads)
                              + "): use models made for one rate")
        self.heads = list(heads)
        groups: dict[FeatureSettings, list[ModelHead]] = {}
        for head in self.heads:
            groups.setdefault(head.bundle.features, []).append(head)
        self.front_ends = [FrontEnd(settings, members) for settings, members in groups.items()]
        if len(self.heads) > 1:
            _LOGGER.info("%d models on %d feature front end(s): %s", len(self.heads), len(self.front_ends),
                         "; ".join(", ".join(h.name for h in fe.heads) for fe in self.front_ends))

    @property
    def sample_rate_hz(self) -> int:
        return self.heads[0].bundle.features.sample_rate_hz

    @property
    def block_ms(self) -> float:
        """Audio block size that costs no latency: the shortest inference stride (features are computed and
        models run only at inference points, so smaller blocks only add wake-ups)."""
        return 1000 * min(head.stride_s for head in self.heads)

    @property
    def window_s(self) -> float:
        """The longest model window: silence to feed after a stream so every model hears its end."""
        return max(head.bundle.window_s for head in self.heads)

    @property
    def heard_s(self) -> float:
        """The longest audio a detection can depend on: a model's window plus its smoothing span."""
        return max(head.bundle.window_s + head.settings.smoothing_s for head in self.heads)

    def reset(self) -> None:
        for front_end in self.front_ends:
            front_end.reset()

    def close(self) -> None:
        for front_end in self.front_ends:
            front_end.close()

    def feed(self, audio: np.ndarray) -> list[Detection]:
        detections = [d for front_end in self.front_ends for d in front_end.feed(audio)]
        if len(self.heads) > 1:
            detections.sort(key=lambda d: d.offset_s)  # stable: equal offsets keep the models' order
        return detections


class KeywordSpotter(MultiSpotter):
    """One model: ``feed`` float32 chunks at the model's sample rate, of any size; get detections."""

    def __init__(self, bundle: Bundle, settings: DetectorSettings, num_threads: int = 1):
        super().__init__([ModelHead(bundle, settings, num_threads)])
        self.head = self.heads[0]
        self.bundle = bundle
        self.settings = settings
        self.classifier = self.head.classifier
        self.detector = self.head.detector
        self.features = self.front_ends[0].stream
        self.stride_frames = self.head.stride_frames

    @property
    def stride_s(self) -> float:
        return self.head.stride_s

    @property
    def last_probabilities(self) -> np.ndarray | None:
        return self.head.last_probabilities
