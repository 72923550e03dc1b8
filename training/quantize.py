"""Post-training full-integer int8 quantization to ``.tflite``."""

from __future__ import annotations

import logging

import numpy as np

_LOGGER = logging.getLogger(__name__)


def quantize_int8(model, representative: np.ndarray) -> bytes:
    """An int8-in, int8-out ``.tflite`` of a Keras model; ``representative`` is ``(n, frames, coeffs)``."""
    import tensorflow as tf

    def samples():
        for row in representative:
            yield [row[None, ..., None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    content = converter.convert()
    _LOGGER.info("int8 model: %d bytes from %d representative windows", len(content), len(representative))
    return content
