"""Detector logic on synthetic score sequences: thresholds, smoothing, refractory period."""

from __future__ import annotations

import numpy as np
import pytest

from kws.detector import Detector, DetectorSettings
from kws.errors import ConfigError

LABELS = ("_silence_", "_unknown_", "yes", "no", "stop")
STRIDE_S = 0.1


def scores(**values: float) -> np.ndarray:
    row = np.zeros(len(LABELS), np.float32)
    for label, value in values.items():
        row[LABELS.index(label.replace("silence", "_silence_").replace("unknown", "_unknown_"))] = value
    row[0] += max(0.0, 1.0 - row.sum())
    return row


def run(detector: Detector, rows) -> list[tuple[str, float]]:
    fired = []
    for step, row in enumerate(rows):
        detection = detector.process(row, round(step * STRIDE_S, 3))
        if detection:
            fired.append((detection.keyword, detection.offset_s))
    return fired


def settings(**overrides) -> DetectorSettings:
    values = dict(thresholds={"yes": 0.7, "no": 0.7, "stop": 0.9}, stride_ms=100, smoothing_s=0.0, refractory_s=1.0)
    values.update(overrides)
    return DetectorSettings(**values)


def test_fires_once_when_threshold_is_crossed():
    rows = [scores()] * 5 + [scores(yes=0.5), scores(yes=0.8), scores(yes=0.95), scores(yes=0.9)] + [scores()] * 5
    assert run(Detector(LABELS, settings()), rows) == [("yes", 0.6)]


def test_per_keyword_thresholds():
    rows = [scores(stop=0.85)] * 5 + [scores()] * 12 + [scores(stop=0.95)] * 2
    assert run(Detector(LABELS, settings()), rows) == [("stop", 1.7)]


def test_background_labels_never_fire():
    rows = [scores(silence=1.0)] * 5 + [scores(unknown=1.0)] * 5
    assert run(Detector(LABELS, settings(thresholds={"yes": 0.1, "no": 0.1, "stop": 0.1})), rows) == []


def test_smoothing_ignores_a_one_step_spike():
    rows = [scores()] * 5 + [scores(yes=0.99)] + [scores()] * 5
    assert run(Detector(LABELS, settings(smoothing_s=0.0)), rows) == [("yes", 0.5)]
    assert run(Detector(LABELS, settings(smoothing_s=0.3)), rows) == []
    sustained = [scores()] * 5 + [scores(yes=0.99)] * 3 + [scores()] * 5
    assert run(Detector(LABELS, settings(smoothing_s=0.3)), sustained) == [("yes", 0.7)]


def test_a_spike_at_the_start_of_a_stream_is_smoothed_as_any_other():
    """The inferences before the start count as zero: a stream's (or a file's) first window does not fire alone."""
    spike_first = [scores(yes=0.99)] + [scores()] * 5
    assert run(Detector(LABELS, settings(smoothing_s=0.3)), spike_first) == []
    assert run(Detector(LABELS, settings(smoothing_s=0.0)), spike_first) == [("yes", 0.0)]
    sustained_first = [scores(yes=0.99)] * 3 + [scores()] * 5
    assert run(Detector(LABELS, settings(smoothing_s=0.3)), sustained_first) == [("yes", 0.2)]
    detector = Detector(LABELS, settings(smoothing_s=0.3))
    run(detector, [scores(yes=0.99)] * 2)
    detector.reset()
    assert run(detector, [scores(yes=0.99)]) == [], "reset empties the span again"


def test_refractory_period_blocks_a_second_word():
    rows = [scores(yes=0.9)] * 2 + [scores()] * 3 + [scores(no=0.9)] * 2 + [scores()] * 10 + [scores(no=0.9)]
    fired = run(Detector(LABELS, settings(refractory_s=1.0)), rows)
    assert fired == [("yes", 0.0), ("no", 1.7)]
    assert run(Detector(LABELS, settings(refractory_s=0.2)), rows) == [("yes", 0.0), ("no", 0.5), ("no", 1.7)]


def test_one_long_utterance_fires_once_even_after_refractory():
    rows = [scores(yes=0.9)] * 30  # three seconds above threshold
    assert run(Detector(LABELS, settings(refractory_s=1.0)), rows) == [("yes", 0.0)]


def test_highest_keyword_wins():
    rows = [scores(yes=0.45, no=0.5)]
    assert run(Detector(LABELS, settings(thresholds={"yes": 0.4, "no": 0.4, "stop": 0.4})), rows) == [("no", 0.0)]


def test_keyword_subset():
    rows = [scores(yes=0.9)] * 2 + [scores()] * 12 + [scores(stop=0.95)] * 2
    assert run(Detector(LABELS, settings(keywords=("stop",))), rows) == [("stop", 1.4)]


def test_reset_forgets_history():
    detector = Detector(LABELS, settings())
    assert run(detector, [scores(yes=0.9)]) == [("yes", 0.0)]
    detector.reset()
    assert run(detector, [scores(yes=0.9)]) == [("yes", 0.0)]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="not in the model"):
        Detector(LABELS, settings(keywords=("maybe",)))
    with pytest.raises(ConfigError, match="threshold for 'yes'"):
        settings(thresholds={"yes": 1.5, "no": 0.5, "stop": 0.5})
    with pytest.raises(ConfigError, match="no threshold for keyword"):
        Detector(LABELS, settings(thresholds={"yes": 0.5}))
    with pytest.raises(ConfigError, match="stride_ms"):
        settings(stride_ms=0)
