"""The streaming spotter gives the numbers of the plain computation, whatever the chunk size.

The spotter computes feature frames lazily (only when an inference is due) and keeps
its window in a longer buffer; the reference here does it the obvious way: MFCC of
the whole stream at once, a window ending every ``stride`` frames, one inference each.
Real clips, the bundled model, a real interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import keyword_stream
from kws.bundle import load_bundle
from kws.detector import Detector
from kws.features import Mfcc
from kws.interpreter import Classifier, make_interpreter
from kws.spotter import KeywordSpotter, detector_settings_for


@pytest.fixture(scope="module")
def audio(shared_data) -> np.ndarray:
    return keyword_stream()[0]


def reference(bundle, audio: np.ndarray):
    """Probabilities at every inference point and the detections, computed on the whole stream at once."""
    settings = detector_settings_for(bundle)
    frames = Mfcc(bundle.features).compute(audio)
    window, stride = bundle.window_frames, KeywordSpotter(bundle, settings).stride_frames
    classifier = Classifier(make_interpreter(bundle.model_content))
    detector = Detector(bundle.labels, settings, bundle.name)
    probabilities, detections = [], []
    for end in range(window, len(frames) + 1, stride):
        p = classifier.predict(frames[end - window : end])
        probabilities.append(p)
        found = detector.process(p, bundle.features.samples_for(end) / bundle.features.sample_rate_hz)
        if found is not None:
            detections.append(found)
    return np.array(probabilities), detections


@pytest.mark.parametrize("sizes", [[320], [1600], [160, 7, 3001, 320], [1], [48000]], ids=str)
def test_chunked_stream_equals_the_whole_stream_computation(audio, sizes):
    bundle = load_bundle(None)
    clip = audio if sizes != [1] else audio[:48000]  # (one sample at a time: 3 s are enough)
    expected_probabilities, expected = reference(bundle, clip)
    spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
    seen, detections, start, k = [], [], 0, 0
    while start < clip.size:
        size = sizes[k % len(sizes)]
        before = spotter.last_probabilities
        detections += spotter.feed(clip[start : start + size])
        if spotter.last_probabilities is not before:
            seen.append(spotter.last_probabilities)
        start, k = start + size, k + 1
    assert [(d.keyword, d.offset_s, d.score) for d in detections] == [(d.keyword, d.offset_s, d.score)
                                                                      for d in expected]
    if len(sizes) == 1 and sizes[0] <= 1600:  # at most one inference per chunk: each one is seen
        assert np.array_equal(np.array(seen), expected_probabilities)
    if clip is audio:
        assert len(expected) >= 0.8 * len(keyword_stream()[1])  # the stream's keywords are heard at all


def test_block_size_is_the_stride(audio):
    bundle = load_bundle(None)
    spotter = KeywordSpotter(bundle, detector_settings_for(bundle, stride_ms=100))
    assert spotter.block_ms == pytest.approx(100)


def test_non_finite_samples_count_as_silence(audio):
    """A broken driver's NaN or inf samples are taken as zeros (before: as the same), never passed on."""
    bundle = load_bundle(None)
    broken, zeroed = audio.copy(), audio.copy()
    broken[16000:16400] = np.nan
    broken[40000:40010] = np.inf
    zeroed[16000:16400] = 0
    zeroed[40000:40010] = 1
    results = []
    for clip in (broken, zeroed):
        spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
        found = [d for i in range(0, clip.size, 320) for d in spotter.feed(clip[i : i + 320])]
        assert np.isfinite(spotter.last_probabilities).all()
        results.append([(d.keyword, d.offset_s, d.score) for d in found])
    assert results[0] == results[1] and results[0]
