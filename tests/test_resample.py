"""The streaming resampler used for microphones that do not offer 16 kHz."""

from __future__ import annotations

import numpy as np
import pytest

from kws.resample import StreamingResampler, lowpass_taps


@pytest.mark.parametrize("length, cutoff", [(72, 0.95 / 3), (3840, 0.95 / 160), (31, 0.3)])
def test_lowpass_taps_are_scipys_firwin(length, cutoff):
    signal = pytest.importorskip("scipy.signal")
    expected = signal.firwin(length, cutoff, window=("kaiser", 8.0))
    assert np.allclose(lowpass_taps(length, cutoff), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_chunked_equals_whole_and_keeps_the_tone(rate):
    t = np.arange(2 * rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    resampler = StreamingResampler(rate, 16000)
    whole = resampler.process(tone)
    resampler.reset()
    rng = np.random.default_rng(0)
    parts, i = [], 0
    while i < tone.size:
        size = int(rng.integers(1, 1500))
        parts.append(resampler.process(tone[i : i + size]))
        i += size
    chunked = np.concatenate(parts)
    assert whole.size == chunked.size == 32000
    assert np.array_equal(whole, chunked)
    steady = whole[4000:20000]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size)))
    assert abs(np.argmax(spectrum) * 16000 / steady.size - 1000) < 2
    assert abs(np.sqrt(2) * steady.std() - 0.5) < 0.01


def test_removes_what_16k_cannot_hold():
    rate = 48000
    t = np.arange(rate) / rate
    high = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above the 8 kHz Nyquist of the output
    out = StreamingResampler(rate, 16000).process(high)
    assert out[2000:].std() < 0.01
