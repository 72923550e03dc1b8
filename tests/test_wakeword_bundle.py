"""The shipped wake-word bundle through the runtime's streaming path: real held-out recordings of "computer"
between real keyword-free read speech, fed as a microphone delivers it, at the bundle's own calibrated
threshold and 1.2 s smoothing."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLE_RATE_HZ, SHARED
from kws.audio_file import read_audio
from kws.bundle import load_bundle
from kws.spotter import KeywordSpotter, detector_settings_for

RECORDINGS = SHARED / "data" / "wakewords" / "computer"
LIBRISPEECH = SHARED / "data" / "librispeech_dev_clean_part"
WORDS = 12
SPEECH_S = 2.5
GAP_S = 0.3


@pytest.fixture(scope="module")
def stream(shared_data):
    return wake_word_stream()


def wake_word_stream():
    """Speech, a held-out recording, speech, ...: the audio and each recording's (start_s, end_s)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_wakeword import pick_clips

    _, held_out = pick_clips(RECORDINGS, 200, 0)  # the example bundle's split (models/computer.md)
    with open(LIBRISPEECH / "INDEX.csv", newline="") as index:
        free = [row["path"] for row in csv.DictReader(index)
                if "COMPUTER" not in row["transcript"] and float(row["duration_s"]) > 2 * SPEECH_S]
    rng = np.random.default_rng(0)

    def floor(seconds: float) -> np.ndarray:
        """A quiet room's noise floor between the parts."""
        return (3e-4 * rng.standard_normal(int(seconds * SAMPLE_RATE_HZ))).astype(np.float32)
    parts, events, at = [], [], 0
    for i, path in enumerate(held_out[::len(held_out) // WORDS][:WORDS]):
        speech = read_audio(LIBRISPEECH / free[i * 7], SAMPLE_RATE_HZ)
        word = read_audio(path, SAMPLE_RATE_HZ)
        for part in (speech[: int(SPEECH_S * SAMPLE_RATE_HZ)], floor(GAP_S)):
            parts.append(part)
            at += part.size
        events.append((at / SAMPLE_RATE_HZ, (at + word.size) / SAMPLE_RATE_HZ))
        parts += [word, floor(GAP_S)]
        at += word.size + int(GAP_S * SAMPLE_RATE_HZ)
    parts.append(read_audio(LIBRISPEECH / free[-1], SAMPLE_RATE_HZ)[: int(SPEECH_S * SAMPLE_RATE_HZ)])
    return np.concatenate(parts), events


def test_the_example_bundle_hears_held_out_recordings_between_speech_and_nothing_else(stream):
    audio, events = stream
    bundle = load_bundle("computer")
    assert bundle.smoothing_s == 1.2 and bundle.calibration["detector"]["smoothing_s"] == 1.2
    spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
    detections = []
    for i in range(0, audio.size, 320):  # 20 ms blocks, as the microphone delivers them
        detections += spotter.feed(audio[i : i + 320])
    detections += spotter.feed(np.zeros(int(spotter.window_s * SAMPLE_RATE_HZ), np.float32))
    # a word's detection comes after its end, within the audio the detector averages over
    heard = [any(start < d.offset_s <= end + spotter.heard_s for d in detections) for start, end in events]
    stray = [d for d in detections if not any(start < d.offset_s <= end + spotter.heard_s for start, end in events)]
    assert sum(heard) >= WORDS - 1, (heard, detections)
    assert stray == [], stray  # the speech between the words never fires at the calibrated threshold
    assert all(d.score >= bundle.thresholds["computer"] for d in detections)


def test_the_example_bundle_stays_quiet_through_read_speech_full_of_sound_alikes(shared_data):
    """54 LibriSpeech utterances (9.6 min) with words that start like the wake word ("company", "complete",
    "commit" ...) as one stream: no detection at the calibrated threshold (at 0.2 two of them fire)."""
    import re

    with open(LIBRISPEECH / "INDEX.csv", newline="") as index:
        rows = [row for row in csv.DictReader(index)
                if re.search(r"\bCOM[MP]", row["transcript"]) and "COMPUTER" not in row["transcript"]]
    assert len(rows) >= 50
    audio = np.concatenate([read_audio(LIBRISPEECH / row["path"], SAMPLE_RATE_HZ) for row in rows])
    bundle = load_bundle("computer")
    spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
    detections = [d for i in range(0, audio.size, 320) for d in spotter.feed(audio[i : i + 320])]
    assert detections == [], detections
