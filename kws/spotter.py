"""Audio in, detections out: features, a window of frames, the classifier every stride, the detector."""

from __future__ import annotations

import logging

import numpy as np

from kws.bundle import Bundle
from kws.detector import Detection, Detector, DetectorSettings
from kws.features import Mfcc
from kws.interpreter import Classifier, make_interpreter

_LOGGER = logging.getLogger(__name__)


def detector_settings_for(bundle: Bundle, **overrides) -> DetectorSettings:
    """The bundle's detector defaults, with any non-None ``overrides`` applied."""
    values = {"thresholds": dict(bundle.thresholds), "smoothing_s": bundle.smoothing_s,
              "refractory_s": bundle.refractory_s}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DetectorSettings(**values)


class KeywordSpotter:
    """``feed`` float32 chunks at the model's sample rate, of any size; get detections."""

    def __init__(self, bundle: Bundle, settings: DetectorSettings, num_threads: int = 1):
        self.bundle = bundle
        self.settings = settings
        self.classifier = Classifier(make_interpreter(bundle.model_content, num_threads))
        self.detector = Detector(bundle.labels, settings, bundle.name)
        self.features = Mfcc(bundle.features).stream()
        hop_ms = bundle.features.hop_ms
        self.stride_frames = max(1, int(round(settings.stride_ms / hop_ms)))
        if abs(self.stride_frames * hop_ms - settings.stride_ms) > 1e-6:
            _LOGGER.info("stride %.1f ms rounded to %d feature hops (%.1f ms)", settings.stride_ms,
                         self.stride_frames, self.stride_frames * hop_ms)
        self._window = np.zeros((bundle.window_frames, bundle.features.n_mfcc), np.float32)
        self._frames_seen = 0
        self._since_inference = 0
        self.last_probabilities: np.ndarray | None = None

    def reset(self) -> None:
        self.features.reset()
        self.detector.reset()
        self._window[:] = 0
        self._frames_seen = 0
        self._since_inference = 0

    def close(self) -> None:
        self.features.close()

    @property
    def stride_s(self) -> float:
        return self.stride_frames * self.bundle.features.hop_ms / 1000

    def _frame_end_s(self) -> float:
        f = self.bundle.features
        return f.samples_for(self._frames_seen) / f.sample_rate_hz

    def feed(self, audio: np.ndarray) -> list[Detection]:
        audio = np.asarray(audio, np.float32)
        if not np.isfinite(audio).all():  # a broken driver or wrong sample format; never feed NaN on
            audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
        detections = []
        frames = self.features.feed(audio)
        window = self.bundle.window_frames
        for frame in frames:
            self._window[:-1] = self._window[1:]
            self._window[-1] = frame
            self._frames_seen += 1
            self._since_inference += 1
            if self._frames_seen >= window and self._since_inference >= self.stride_frames:
                self._since_inference = 0
                self.last_probabilities = self.classifier.predict(self._window)
                detection = self.detector.process(self.last_probabilities, self._frame_end_s())
                if detection is not None:
                    _LOGGER.debug("detected %s %.3f at %.2f s", detection.keyword, detection.score, detection.offset_s)
                    detections.append(detection)
        return detections
