"""DS-CNN architectures (Zhang et al., "Hello Edge", 2017), by name from a registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DsCnnSpec:
    """One DS-CNN size: a strided conv, then depthwise-separable blocks, average pool, dense."""

    filters: int
    """Channels of every layer."""
    blocks: int
    """Number of depthwise-separable blocks after the first conv."""
    first_kernel: tuple[int, int] = (10, 4)
    """Time x frequency kernel of the first conv."""
    first_stride: tuple[int, int] = (2, 2)
    dropout: float = 0.2
    """Dropout before the classifier."""


REGISTRY: dict[str, DsCnnSpec] = {
    "ds-cnn-s": DsCnnSpec(filters=64, blocks=4, dropout=0.2),
    "ds-cnn-m": DsCnnSpec(filters=172, blocks=4, dropout=0.4),
    "ds-cnn-l": DsCnnSpec(filters=276, blocks=5, dropout=0.4),
}


def architectures() -> list[str]:
    return sorted(REGISTRY)


def build_model(name: str, input_shape: tuple[int, int], n_classes: int):
    """A Keras model from ``(frames, coefficients)`` features to softmax probabilities."""
    import keras
    from keras import layers

    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(architectures())}")
    spec = REGISTRY[name]
    inputs = keras.Input(shape=(*input_shape, 1), name="mfcc")
    x = layers.Conv2D(spec.filters, spec.first_kernel, strides=spec.first_stride, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for _ in range(spec.blocks):
        x = layers.DepthwiseConv2D((3, 3), padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(spec.filters, (1, 1), use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(spec.dropout)(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    outputs = layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)


def logits_model(model):
    """The same layers (shared weights), ending before the softmax: what training optimises."""
    import keras

    return keras.Model(model.inputs, model.get_layer("logits").output, name=f"{model.name}-logits")


def count_macs(model) -> int:
    """Multiply-accumulates of one inference over the conv, depthwise and dense layers."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


