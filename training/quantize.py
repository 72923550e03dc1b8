"""Post-training full-integer int8 quantization to ``.tflite``.

The int8 input has one scale for every coefficient, set by the range of the
representative windows. c0 (the log energy) spans far more than the others, and
digital silence (exact zeros: the gaps of some recorders, or the flush of
``kws detect``) takes it to ``log(log_floor)``: about -124 where the quietest
16-bit audio gives about -70. Left in, those windows make the step about 1.5
times coarser for every coefficient, and c2..c9 vary by only 1-2. So the
representative windows are raised to ``input_floor`` (the lowest feature of
16-bit quantization noise) first: below it the int8 input saturates, and
silence stays silence.
"""

from __future__ import annotations

import logging

import numpy as np

from kws.features import FeatureSettings, Mfcc

_LOGGER = logging.getLogger(__name__)

_QUIET_S = 1.0


def input_floor(features: FeatureSettings) -> float:
    """The lowest feature of 16-bit quantization noise (uniform within half a step): the quietest audio a 16-bit
    microphone gives. Seeded, so the same settings give the same floor."""
    step = 2.0 ** -15
    noise = np.random.default_rng(0).uniform(-step / 2, step / 2, int(_QUIET_S * features.sample_rate_hz))
    return float(Mfcc(features).compute(noise.astype(np.float32)).min())


def quantize_int8(model, representative: np.ndarray, features: FeatureSettings | None) -> bytes:
    """An int8-in, int8-out ``.tflite`` of a Keras model; ``representative`` is ``(n, frames, coeffs)``.

    ``features`` are the settings the windows were computed with: they are raised to ``input_floor(features)``
    first, so the input's int8 range starts there. None leaves the windows as they are."""
    import tensorflow as tf

    representative = np.asarray(representative, np.float32)
    if features is not None and representative.size:
        floor = input_floor(features)
        _LOGGER.info("int8 input: windows from %.1f raised to the floor %.1f", float(representative.min()), floor)
        representative = np.maximum(representative, np.float32(floor))

    def samples():
        for row in representative:
            yield [row[None, ..., None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    content = converter.convert()
    _LOGGER.info("int8 model: %d bytes from %d representative windows", len(content), len(representative))
    return content
