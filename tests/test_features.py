"""The MFCC front end: streaming equals batch bit for bit; it matches tf.signal."""

from __future__ import annotations

import numpy as np
import pytest

from kws.errors import FeatureSettingsError
from kws.features import FeatureSettings, Mfcc

from conftest import read_clip


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    return np.concatenate([read_clip("yes/0cb74144_nohash_0.flac"), read_clip("stop/0c40e715_nohash_0.flac")])


@pytest.mark.parametrize("chunk_sizes", [[1], [7, 13, 1001], [159, 160, 161], [320], [4095, 3]])
def test_streaming_equals_batch_bit_for_bit(speech, chunk_sizes):
    mfcc = Mfcc(FeatureSettings())
    batch = mfcc.compute(speech)
    stream = mfcc.stream()
    out, i, k = [], 0, 0
    while i < speech.size:
        size = chunk_sizes[k % len(chunk_sizes)]
        out.append(stream.feed(speech[i : i + size]))
        i, k = i + size, k + 1
    streamed = np.concatenate(out)
    assert streamed.shape == batch.shape == (FeatureSettings().frames_for(speech.size), 10)
    assert np.array_equal(streamed, batch)


def test_stream_reset_starts_over(speech):
    mfcc = Mfcc(FeatureSettings())
    stream = mfcc.stream()
    stream.feed(speech[:1234])
    stream.reset()
    assert np.array_equal(stream.feed(speech), mfcc.compute(speech))


def test_batch_of_clips_equals_single_clips(speech):
    mfcc = Mfcc(FeatureSettings())
    clips = np.stack([speech[i : i + 16000] for i in range(0, 16000, 800)][:20])
    batch = mfcc.compute_batch(clips)
    for clip, features in zip(clips, batch):
        assert np.array_equal(features, mfcc.compute(clip))


@pytest.mark.parametrize("settings", [FeatureSettings(), FeatureSettings(window_ms=40, n_fft=1024, fmax_hz=4000, n_mfcc=13)])
def test_matches_tf_signal(speech, settings):
    """Reference: TensorFlow's own ops. Tolerance: 1e-4 absolute (coefficients reach about 100)."""
    tf = pytest.importorskip("tensorflow", reason="the reference needs the [train] extra")
    stft = tf.signal.stft(speech, settings.window_samples, settings.hop_samples, settings.n_fft,
                          window_fn=tf.signal.hann_window)
    mel = tf.signal.linear_to_mel_weight_matrix(settings.n_mels, settings.n_fft // 2 + 1, settings.sample_rate_hz,
                                                settings.fmin_hz, settings.fmax_hz)
    log_mel = tf.math.log(tf.tensordot(tf.abs(stft), mel, 1) + settings.log_floor)
    reference = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[:, : settings.n_mfcc].numpy()
    ours = Mfcc(settings).compute(speech)
    assert ours.shape == reference.shape
    assert np.max(np.abs(ours - reference)) < 1e-4


def test_short_audio_has_no_frames():
    assert Mfcc(FeatureSettings()).compute(np.zeros(100, np.float32)).shape == (0, 10)


@pytest.mark.parametrize("field,value,message", [
    ("hop_ms", 20.03, "whole number of samples"),
    ("n_fft", 256, "n_fft"),
    ("fmax_hz", 9000.0, "Nyquist"),
    ("n_mfcc", 41, "n_mfcc"),
    ("window", "hamming", "window"),
    ("normalization", "cmvn", "normalization"),
    ("log_floor", 0.0, "log_floor"),
])
def test_impossible_settings_are_refused(field, value, message):
    with pytest.raises(FeatureSettingsError, match=message):
        FeatureSettings(**{field: value})


def test_from_dict_refuses_unknown_and_missing_keys():
    good = FeatureSettings().to_dict()
    assert FeatureSettings.from_dict(good) == FeatureSettings()
    with pytest.raises(FeatureSettingsError, match="unknown feature setting.*pcen"):
        FeatureSettings.from_dict({**good, "pcen": True})
    del good["n_mels"]
    with pytest.raises(FeatureSettingsError, match="lack n_mels"):
        FeatureSettings.from_dict(good)
