"""int8 quantization: the input's range starts at the quietest 16-bit audio, not at digital silence."""

from __future__ import annotations

import numpy as np
import pytest

from kws.features import FeatureSettings, Mfcc
from kws.interpreter import Classifier, make_interpreter

pytest.importorskip("tensorflow", reason="training needs the [train] extra")

from training.quantize import input_floor, quantize_int8  # noqa: E402

FEATURES = FeatureSettings()
WINDOW_S = 0.99


def _noise(level_db: float, rng: np.random.Generator, seconds: float = WINDOW_S) -> np.ndarray:
    return (rng.normal(0, 10 ** (level_db / 20), int(seconds * FEATURES.sample_rate_hz))).astype(np.float32)


def test_the_floor_lies_between_digital_silence_and_quiet_audio():
    mfcc = Mfcc(FEATURES)
    floor = input_floor(FEATURES)
    silence = float(mfcc.compute(np.zeros(16000, np.float32)).min())
    quiet = float(mfcc.compute(_noise(-70, np.random.default_rng(1))).min())  # a very quiet room
    assert silence + 40 < floor < quiet
    assert input_floor(FEATURES) == floor  # seeded: the same settings give the same floor


def _model(frames: int):
    import keras

    inputs = keras.Input((frames, FEATURES.n_mfcc, 1))
    x = keras.layers.Conv2D(8, (3, 3), activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)  # scores, not probabilities: no softmax to flatten the error
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(5)  # weights of our own: the same model whatever Keras' seeds are
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _input_range(content: bytes) -> tuple[float, float]:
    scale, zero = make_interpreter(content, 1).get_input_details()[0]["quantization"]
    return scale * (-128 - zero), scale


def test_digital_silence_no_longer_coarsens_the_input_step():
    mfcc, rng = Mfcc(FEATURES), np.random.default_rng(0)
    sounds = [mfcc.compute(_noise(level, rng)) for level in rng.uniform(-50, -10, 60)]
    silence = mfcc.compute(np.zeros(int(WINDOW_S * FEATURES.sample_rate_hz), np.float32))
    representative = np.stack(sounds + [silence] * 6)
    model = _model(silence.shape[0])
    floor = input_floor(FEATURES)

    plain = quantize_int8(model, representative, None)
    floored = quantize_int8(model, representative, FEATURES)
    (plain_low, plain_step), (low, step) = _input_range(plain), _input_range(floored)
    assert abs(plain_low - representative.min()) < plain_step  # digital silence set the range...
    assert abs(low - floor) < step  # ...now the quietest 16-bit audio does
    assert step < plain_step / 1.4

    # the int8 model follows the float one more closely on sound, and digital silence saturates
    expected = model.predict(np.stack(sounds)[..., None], verbose=0)
    errors = [np.abs(np.stack([Classifier(make_interpreter(c, 1)).predict(s) for s in sounds]) - expected).mean()
              for c in (plain, floored)]
    assert errors[1] < 0.8 * errors[0], errors
    classifier = Classifier(make_interpreter(floored, 1))
    at_floor = np.maximum(silence, np.float32(floor))
    np.testing.assert_array_equal(classifier.predict(silence), classifier.predict(at_floor))
