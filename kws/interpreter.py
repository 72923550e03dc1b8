"""The TFLite interpreter: whichever backend this platform has, and a classifier on top.

Backends are tried in order: ``ai_edge_litert`` (maintained; wheels for x86-64
and aarch64), ``tflite_runtime`` (the only one on 32-bit Pi OS), then
``tensorflow.lite`` (inside a full TensorFlow install). Imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from kws.errors import KwsError

_LOGGER = logging.getLogger(__name__)

BACKENDS = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)
"""(name as shown to users, module that holds ``Interpreter``), in order of preference."""


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    interpreter_class: Any

    @property
    def version(self) -> str:
        top = importlib.import_module(self.module.split(".")[0])
        return str(getattr(top, "__version__", "unknown"))


_backend: Backend | None = None


def backend() -> Backend:
    """The first backend that imports; cached."""
    global _backend
    if _backend is None:
        errors = []
        for name, module in BACKENDS:
            try:
                imported = importlib.import_module(module)
            except Exception as error:  # a broken wheel raises more than ImportError
                errors.append(f"{module}: {error}")
                continue
            _backend = Backend(name, module, imported.Interpreter)
            _LOGGER.debug("interpreter backend: %s", name)
            break
        else:
            raise KwsError(
                "no TFLite interpreter found: pip install ai-edge-litert "
                "(or tflite-runtime on 32-bit Pi OS); tried " + "; ".join(errors)
            )
    return _backend


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide the C++ library's banner ("Created TensorFlow Lite XNNPACK delegate") unless debugging."""
    if _LOGGER.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def make_interpreter(model_content: bytes, num_threads: int = 1) -> Any:
    """An allocated interpreter; raises ``ValueError``/``RuntimeError`` for a model it cannot load."""
    cls = backend().interpreter_class
    with _native_stderr_silenced():
        interpreter = cls(model_content=model_content, num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


class Classifier:
    """One window of features in, class probabilities out, through an int8 (or float) model."""

    def __init__(self, interpreter: Any):
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        self._in_scale, self._in_zero = self._input["quantization"]
        self._out_scale, self._out_zero = self._output["quantization"]
        self._in_dtype = self._input["dtype"]
        self._out_dtype = self._output["dtype"]
        shape = tuple(int(d) for d in self._input["shape"])
        self._scratch = np.zeros(shape, np.float32)  # predict's working buffers: no allocation per inference
        self._tensor = np.zeros(shape, self._in_dtype)
        self._quantized = self._in_dtype in (np.int8, np.uint8)
        if self._quantized:
            info = np.iinfo(self._in_dtype)
            self._in_range = (np.float32(info.min), np.float32(info.max))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"])

    def _fill_input(self, features: np.ndarray) -> None:
        """One window of features into the input tensor's buffer (int8: ``round(x / scale + zero)``, clipped),
        computed in float32 in buffers made once."""
        scratch = self._scratch
        if self._quantized:
            np.divide(features, np.float32(self._in_scale), out=scratch.reshape(np.shape(features)),
                      casting="unsafe")
            np.add(scratch, np.float32(self._in_zero), out=scratch)
            np.rint(scratch, out=scratch)
            np.clip(scratch, *self._in_range, out=scratch)
            self._tensor[...] = scratch
        else:
            self._tensor.reshape(np.shape(features))[...] = features

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``features`` shaped like one window (frames x coefficients) -> probabilities, float32."""
        self._fill_input(features)
        self._interpreter.set_tensor(self._input["index"], self._tensor)
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])[0]
        if self._out_dtype in (np.int8, np.uint8):
            return ((out.astype(np.float32) - self._out_zero) * self._out_scale).astype(np.float32)
        return out.astype(np.float32)
