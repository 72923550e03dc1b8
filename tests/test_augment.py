"""Augmentations: each part does what it says and can be switched off."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import (AugmentSettings, add_reverb, augment, change_speed, random_noise_cuts, spec_augment,
                              synthetic_room_responses, time_shift, whispered)

RATE = 16000


def tone(hz: float, n: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / RATE)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(x.size)))) * RATE / x.size)


def test_noise_cuts_have_unit_rms_whatever_the_recording_level():
    rng = np.random.default_rng(0)
    quiet = [0.001 * rng.standard_normal(5 * RATE).astype(np.float32)]
    cuts = random_noise_cuts(quiet, 4, RATE, rng)
    assert np.allclose(np.sqrt((cuts.astype(np.float64) ** 2).mean(axis=1)), 1.0, atol=1e-3)


def test_snr_and_silence_levels():
    rng = np.random.default_rng(1)
    noise = [rng.standard_normal(5 * RATE).astype(np.float32)]
    clips = np.tile((tone(500) * 32767).astype(np.int16), (400, 1))
    is_silence = np.arange(400) >= 200
    settings = AugmentSettings(time_shift_ms=0, noise_probability=1.0, noise_snr_db=(10.0, 10.0), silence_rms=(0.01, 0.1))
    out = augment(clips, is_silence, noise, settings, RATE, rng)
    speech_rms = np.sqrt(np.mean(tone(500) ** 2))
    added = out[:200] - clips[:200] / 32768.0
    snr = 20 * np.log10(speech_rms / np.sqrt((added.astype(np.float64) ** 2).mean(axis=1)))
    assert np.allclose(snr, 10.0, atol=0.1)
    silence_rms = np.sqrt((out[200:].astype(np.float64) ** 2).mean(axis=1))
    assert silence_rms.min() >= 0.0099 and silence_rms.max() <= 0.101
    assert np.log(silence_rms).std() > 0.4  # spread over the range, not one level


def test_switched_off_parts_leave_audio_alone():
    rng = np.random.default_rng(2)
    clips = (np.tile(tone(300), (5, 1)) * 32767).astype(np.int16)
    off = AugmentSettings(time_shift_ms=0, noise_probability=0.0)
    out = augment(clips, np.zeros(5, bool), [rng.standard_normal(RATE)], off, RATE, rng)
    assert np.array_equal(out, clips / np.float32(32768.0))


def test_time_shift_moves_and_zero_fills():
    x = np.arange(1, 11, dtype=np.float32)[None].repeat(50, axis=0)
    out = time_shift(x, 3, np.random.default_rng(3))
    for row in out:
        nonzero = row[row != 0]
        assert 7 <= nonzero.size <= 10 and np.all(np.diff(nonzero) == 1)


def test_speed_change_moves_pitch_and_keeps_length():
    x = np.stack([tone(1000), tone(1000)])
    out = change_speed(x, np.array([True, False]), np.array([1.2, 1.2]))
    assert out.shape == x.shape
    assert abs(peak_hz(out[0][3000:13000]) - 1200) < 5
    assert np.array_equal(out[1], x[1])


def test_reverb_spreads_a_click_and_keeps_loudness():
    click = np.zeros((1, RATE), np.float32)
    click[0, 1000] = 0.5
    response = np.exp(-np.arange(4000) / 800.0).astype(np.float32) * np.random.default_rng(4).standard_normal(4000)
    response[0] = 3.0
    out = add_reverb(click, np.array([True]), [response.astype(np.float32)], np.random.default_rng(5))
    energy = out[0] ** 2
    assert np.argmax(np.abs(out[0])) == 1000  # direct sound stays in place
    assert energy[1001:5000].sum() > 0.05 * energy.sum()  # a tail follows it
    assert np.isclose(np.sqrt(energy.mean()), np.sqrt((click[0] ** 2).mean()), rtol=1e-3)


def decay_time_s(response: np.ndarray, gap: int) -> float:
    """Reverberation time from the Schroeder integral of the tail: time from -5 dB to -25 dB, times 3."""
    tail = response[gap:].astype(np.float64) ** 2
    level_db = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    return 3 * (np.argmax(level_db < -25) - np.argmax(level_db < -5)) / RATE


def test_made_up_rooms_decay_as_asked_and_vary():
    responses = synthetic_room_responses(40, RATE, np.random.default_rng(8), rt60_s=(0.2, 0.8),
                                         direct_to_reverberant_db=(0.0, 10.0))
    assert len(responses) == 40
    times, ratios = [], []
    for response in responses:
        assert response.dtype == np.float32 and response[0] == 1.0
        gap = int(np.argmax(np.abs(response[1:]) > 0)) + 1
        assert 0.002 * RATE <= gap <= 0.012 * RATE  # silence between the direct sound and the first reflection
        times.append(decay_time_s(response, gap))
        ratios.append(10 * np.log10(1.0 / np.sum(response[gap:].astype(np.float64) ** 2)))
        quarter = (len(response) - gap) // 4
        early, late = (np.abs(np.fft.rfft(part)) ** 2 for part in (response[gap:gap + quarter], response[-quarter:]))
        dullness = [x[: x.size // 4].sum() / x[x.size // 2:].sum() for x in (early, late)]
        assert dullness[1] > 2 * dullness[0]  # high frequencies die first
    assert 0.15 < min(times) and max(times) < 0.9 and max(times) - min(times) > 0.3
    assert -0.01 < min(ratios) < 2 and 8 < max(ratios) < 10.01
    again = synthetic_room_responses(40, RATE, np.random.default_rng(8), rt60_s=(0.2, 0.8),
                                     direct_to_reverberant_db=(0.0, 10.0))
    assert all(np.array_equal(a, b) for a, b in zip(responses, again))
    out = add_reverb(tone(500)[None], np.array([True]), responses[:1], np.random.default_rng(9))
    assert not np.allclose(out, tone(500)[None], atol=1e-3)


def test_spec_augment_masks_bands_with_the_mean():
    features = np.random.default_rng(6).standard_normal((20, 49, 10)).astype(np.float32)
    settings = AugmentSettings(time_masks=2, time_mask_frames=8, frequency_masks=1, frequency_mask_bins=3)
    out = spec_augment(features, settings, np.random.default_rng(7))
    changed = out != features
    assert changed.any()
    for i in range(20):
        rows = np.flatnonzero(changed[i].all(axis=1))
        columns = np.flatnonzero(changed[i].all(axis=0))
        assert rows.size <= 16 and columns.size <= 3
        assert np.allclose(out[i][changed[i]], features[i].mean())
    assert spec_augment(features, AugmentSettings(), np.random.default_rng(7)) is features


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="speed_range"):
        AugmentSettings(speed_range=(1.2, 0.8))


def harmonicity(x: np.ndarray, f0_hz: float) -> float:
    """Power at the harmonics of ``f0_hz`` over the power halfway between them, 300 to 1800 Hz."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    hz = np.fft.rfftfreq(x.size, 1 / RATE)
    near = lambda centres: np.mean([spectrum[np.abs(hz - c) <= 10].mean() for c in centres])  # noqa: E731
    harmonics = np.arange(2, 13) * f0_hz
    return float(near(harmonics) / near(harmonics + f0_hz / 2))


def test_whispered_keeps_the_envelope_and_loses_the_pitch():
    # A 150 Hz voice with two formants (500 and 1500 Hz): harmonics weighted by the envelope.
    t = np.arange(RATE // 2) / RATE
    harmonics = np.arange(1, 50) * 150.0
    envelope = np.exp(-(((harmonics - 500) / 150) ** 2)) + 0.5 * np.exp(-(((harmonics - 1500) / 200) ** 2)) + 0.01
    voice = (envelope[:, None] * np.sin(2 * np.pi * harmonics[:, None] * t)).sum(axis=0)
    voice = (0.2 * voice / np.abs(voice).max()).astype(np.float32)
    rng = np.random.default_rng(5)
    out = whispered((np.stack([voice, voice]) * 32767).astype(np.int16), rng)
    assert out.shape == (2, voice.size) and out.dtype == np.float32
    assert not np.array_equal(out[0], out[1])  # fresh noise for every copy
    middle = slice(1000, voice.size - 1000)
    assert harmonicity(voice[middle], 150) > 100
    assert max(harmonicity(row[middle], 150) for row in out) < 3
    rms = lambda x: np.sqrt(np.mean(np.square(x, dtype=np.float64)))  # noqa: E731
    assert all(abs(rms(row) / rms(voice) - 1) < 0.02 for row in out)
    # The formants stay where they were, and the low frequencies lose the glottal pulses' weight.
    def share(x: np.ndarray, low: float, high: float) -> float:
        spectrum = np.abs(np.fft.rfft(x[middle] * np.hanning(x[middle].size))) ** 2
        hz = np.fft.rfftfreq(x[middle].size, 1 / RATE)
        return spectrum[(hz >= low) & (hz < high)].sum() / spectrum.sum()

    first, second, between = (300, 700), (1300, 1700), (900, 1100)
    assert share(out[0], *first) > 3 * share(out[0], *between) and share(out[0], *second) > 3 * share(out[0], *between)
    assert share(out[0], *first) / share(out[0], *second) < share(voice, *first) / share(voice, *second) / 2
