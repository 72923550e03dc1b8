"""Pretrained keyword-spotting models as distillation teachers.

Every teacher takes one-second clips, float32 ``(n, 16000)`` in [-1, 1] at
16 kHz, and returns ``(n, 12)`` probabilities in OUR label order
(``training.data.LABELS``). Each one reproduces its own authors' front end:
never feed a teacher our features.

- ``mlperf``: the MLCommons Tiny DS-CNN reference model (float TFLite), front end
  peak normalisation (``x / max(x)``, as the reference code) + 30 ms/20 ms MFCC
  with 40 mel bands 20-4000 Hz and 10 coefficients (``kws.features.Mfcc``).
- ``arm-s``, ``arm-m``, ``arm-l``: the "Hello Edge" DS-CNN frozen TF1 graphs; they
  compute their own MFCC from the bytes of a 16-bit PCM WAV file.
- ``attention-rnn``: the attention-RNN, rebuilt in Keras 3 with the weights read
  from the Keras 2 ``.h5`` file; 80-band log-mel front end standardised per clip
  (``attention-rnn-global``: with fixed data-set statistics instead, see
  ``ATTENTION_GLOBAL_STATS``). It hardly ever says ``_silence_`` for noise.

``load_teacher("arm-l,attention-rnn")`` gives one teacher or an ``Ensemble``
(mean of the members' probabilities). The models live in a shared folder:
the ``root`` argument, else ``$KWS_TEACHERS``, else ``../shared/teachers``
beside the checkout. TensorFlow, Keras and h5py are imported on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from kws.audio_file import wav_bytes
from kws.errors import KwsError
from kws.features import FeatureSettings, Mfcc
from training.data import CLIP_SAMPLES, KEYWORDS, LABELS, SAMPLE_RATE_HZ, SILENCE, UNKNOWN

_LOGGER = logging.getLogger(__name__)

ENV_VAR = "KWS_TEACHERS"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "teachers"


class TeacherError(KwsError):
    """A teacher that cannot be built: unknown name, missing or unreadable file."""


class Teacher(Protocol):
    name: str

    def predict(self, audio: np.ndarray) -> np.ndarray:
        """float32 ``(n, 16000)`` in [-1, 1] -> ``(n, 12)`` probabilities in ``LABELS`` order."""


def teachers_root(root: str | Path | None = None) -> Path:
    """The shared teachers folder: ``root``, else ``$KWS_TEACHERS``, else the default beside the checkout."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_ROOT


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise TeacherError(
            f"teacher file {path} not found: pass the teachers folder or set ${ENV_VAR} to it")
    return path


def label_mapping(native: Sequence[str]) -> np.ndarray:
    """``(len(native), 12)`` 0/1 matrix: ``native_probs @ M`` gives probabilities in ``LABELS`` order.

    A native label that is one of ours keeps its place; any other word (``nine``,
    ``bed``, ...) counts as ``_unknown_``.
    """
    mapping = np.zeros((len(native), len(LABELS)), np.float32)
    for i, name in enumerate(native):
        mapping[i, LABELS.index(name) if name in LABELS else LABELS.index(UNKNOWN)] = 1.0
    return mapping


def as_clips(audio: np.ndarray) -> np.ndarray:
    """Checked float32 ``(n, 16000)``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] != CLIP_SAMPLES:
        raise ValueError(f"teachers take (n, {CLIP_SAMPLES}) one-second clips at {SAMPLE_RATE_HZ} Hz, "
                         f"got shape {audio.shape}")
    return audio


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _normalise_rows(probs: np.ndarray) -> np.ndarray:
    probs = np.clip(probs.astype(np.float64), 0.0, None)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


class MappedTeacher:
    """A model with its own label order: subclasses return native probabilities for a batch."""

    name = "?"
    native_labels: Sequence[str] = LABELS
    batch_size = 256

    def __init__(self) -> None:
        self._mapping = label_mapping(self.native_labels)

    def native_predict(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, audio: np.ndarray) -> np.ndarray:
        audio = as_clips(audio)
        out = np.empty((len(audio), len(LABELS)), np.float32)
        for start in range(0, len(audio), self.batch_size):
            native = self.native_predict(audio[start : start + self.batch_size])
            out[start : start + len(native)] = native @ self._mapping
        return _normalise_rows(out)

    def __repr__(self) -> str:
        return f"<teacher {self.name}>"


# --- MLPerf Tiny DS-CNN -------------------------------------------------------------------------

MLPERF_FEATURES = FeatureSettings(window_ms=30.0, hop_ms=20.0, n_fft=512, n_mels=40, fmin_hz=20.0,
                                  fmax_hz=4000.0, n_mfcc=10, log_floor=1e-6)


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """``x / max(x)`` per clip, as the MLPerf Tiny reference (signed max, not max |x|).

    A clip whose maximum is not positive is divided by its max |x| instead, and an
    all-zero clip stays zero.
    """
    peak = audio.max(axis=1, keepdims=True)
    peak = np.where(peak > 0, peak, np.abs(audio).max(axis=1, keepdims=True))
    return audio / np.where(peak > 0, peak, 1.0).astype(np.float32)


class MlperfTeacher(MappedTeacher):
    native_labels = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", SILENCE, UNKNOWN)
    batch_size = 256

    def __init__(self, name: str, path: Path):
        super().__init__()
        self.name = name
        self.path = _require_file(path)
        self._mfcc = Mfcc(MLPERF_FEATURES)
        self._interpreter = None
        self._probabilities: bool | None = None

    def features(self, audio: np.ndarray) -> np.ndarray:
        return self._mfcc.compute_batch(peak_normalise(audio))

    def _resize(self, batch: int) -> None:
        interpreter = self._interpreter
        index = interpreter.get_input_details()[0]["index"]
        if int(interpreter.get_input_details()[0]["shape"][0]) != batch:
            interpreter.resize_tensor_input(index, [batch, 49, 10, 1])
            interpreter.allocate_tensors()

    def native_predict(self, audio: np.ndarray) -> np.ndarray:
        from kws.interpreter import make_interpreter

        if self._interpreter is None:
            try:
                self._interpreter = make_interpreter(self.path.read_bytes())
            except (ValueError, RuntimeError) as error:
                raise TeacherError(f"teacher file {self.path} cannot be loaded: {error}") from None
        features = self.features(audio)[..., None]
        n = len(features)
        if n < self.batch_size:  # a fixed batch avoids re-allocating for every short tail
            features = np.concatenate([features, np.zeros((self.batch_size - n,) + features.shape[1:], np.float32)])
        self._resize(len(features))
        interpreter = self._interpreter
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], features)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:n].astype(np.float32)
        if self._probabilities is None:
            # The float model ends in SOFTMAX; keep the check in case a logits model is dropped in.
            self._probabilities = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
            _LOGGER.debug("%s: output is %s", self.name, "softmax" if self._probabilities else "logits")
        return out if self._probabilities else softmax(out)


# --- Arm "Hello Edge" DS-CNN (frozen TF1 graphs) -------------------------------------------------


class FrozenGraphTeacher(MappedTeacher):
    """A TF1 frozen graph that reads a WAV file's bytes and outputs softmax probabilities."""

    INPUT = "wav_data:0"
    OUTPUT = "labels_softmax:0"
    batch_size = 64

    def __init__(self, name: str, path: Path, labels_path: Path):
        self.name = name
        self.path = _require_file(path)
        labels = [line.strip() for line in _require_file(labels_path).read_text().splitlines() if line.strip()]
        if sorted(labels) != sorted(LABELS):
            raise TeacherError(f"{labels_path}: expected the 12 labels {', '.join(LABELS)}, got {', '.join(labels)}")
        self.native_labels = tuple(labels)
        super().__init__()
        self._session = None

    def _open(self):
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(self.path.read_bytes())
        except Exception as error:  # protobuf's DecodeError
            raise TeacherError(f"teacher file {self.path} is not a TensorFlow GraphDef: {error}") from None
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        names = {op.name for op in graph.get_operations()}
        for tensor in (self.INPUT, self.OUTPUT):
            if tensor.split(":")[0] not in names:
                raise TeacherError(f"teacher file {self.path} has no tensor {tensor}")
        # Follow the process's TensorFlow threading (tf.config.threading; 0 = TensorFlow's default).
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads())
        session = tf.compat.v1.Session(graph=graph, config=config)
        _LOGGER.info("%s: loaded %s (%d ops)", self.name, self.path, len(names))
        return session, graph.get_tensor_by_name(self.INPUT), graph.get_tensor_by_name(self.OUTPUT)

    def native_predict(self, audio: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self._open()
        session, wav_in, probs_out = self._session
        # The graph decodes one WAV file per run (its input is a scalar string).
        return np.stack([session.run(probs_out, {wav_in: wav_bytes(clip, SAMPLE_RATE_HZ)})[0] for clip in audio])


# --- Attention RNN (Keras 2 .h5 weights, rebuilt in Keras 3) -------------------------------------

ATTENTION_RNN_LABELS = (
    (SILENCE, "nine") + KEYWORDS + ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
    + ("backward", "bed", "bird", "cat", "dog", "follow", "forward", "happy", "house", "learn", "marvin",
       "sheila", "tree", "visual", "wow"))
"""Its 36 outputs; output 0 is silence / unknown / background noise, and is our ``_silence_``."""

ATTENTION_FRAMES = 125
ATTENTION_MELS = 80
ATTENTION_GLOBAL_STATS = (-2.6004, 2.8283)
"""Mean and std of the log-mel over 3,000 of our Speech Commands training clips (seed 7).

The original model standardises with ``reduce_mean``/``reduce_std`` over the whole
input tensor, i.e. over the training *batch*, so in training each clip was scaled
by (roughly) data-set statistics; ``standardise="global"`` uses these fixed ones.
"""


def build_attention_rnn():
    """The attention-RNN architecture on its ``(125, 80)`` normalised log-mel input, layer names as the .h5."""
    import keras
    from keras import layers

    features = keras.Input((ATTENTION_FRAMES, ATTENTION_MELS), name="mel_stft")
    x = layers.Reshape((ATTENTION_FRAMES, ATTENTION_MELS, 1), name="expand_dims")(features)
    x = layers.Conv2D(10, (5, 1), padding="same", activation="relu", name="conv2d")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="batch_normalization")(x)
    x = layers.Conv2D(1, (5, 1), padding="same", activation="relu", name="conv2d_1")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="batch_normalization_1")(x)
    x = layers.Reshape((ATTENTION_FRAMES, ATTENTION_MELS), name="squeeze_last_dim")(x)
    x = layers.Bidirectional(layers.LSTM(64, return_sequences=True), name="bidirectional")(x)
    sequence = layers.Bidirectional(layers.LSTM(64, return_sequences=True), name="bidirectional_1")(x)
    last = layers.Lambda(lambda s: s[:, -1], output_shape=(128,), name="lambda")(sequence)
    query = layers.Dense(128, name="dense")(last)
    scores = layers.Dot(axes=[1, 2], name="dot")([query, sequence])
    weights = layers.Softmax(name="attSoftmax")(scores)
    context = layers.Dot(axes=[1, 1], name="dot_1")([weights, sequence])
    x = layers.Dense(64, activation="relu", name="dense_1")(context)
    x = layers.Dense(32, name="dense_2")(x)
    output = layers.Dense(len(ATTENTION_RNN_LABELS), activation="softmax", name="output")(x)
    return keras.Model(features, output, name="attention_rnn")


def load_attention_rnn_weights(model, path: Path) -> int:
    """Copy the Keras 2 weights (``model_weights/<layer>/<layer>/...:0``) into ``model``; returns arrays set."""
    import h5py

    def read(group, *names):
        return {name: np.asarray(group[f"{name}:0"]) for name in names}

    assigned = 0

    def assign(variable, value, where: str):
        nonlocal assigned
        if tuple(variable.shape) != value.shape:
            raise TeacherError(f"{path}: {where} has shape {value.shape}, the model expects {tuple(variable.shape)}")
        variable.assign(value)
        assigned += 1

    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise TeacherError(f"teacher file {path} is not an HDF5 file: {error}") from None
    with file:
        if "model_weights" not in file:
            raise TeacherError(f"teacher file {path} has no model_weights group")
        root = file["model_weights"]
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in root:
                raise TeacherError(f"teacher file {path} has no weights for layer {layer.name}")
            group = root[layer.name][layer.name]
            where = f"{layer.name}"
            if layer.__class__.__name__ == "Bidirectional":
                for direction, sub in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
                    (lstm_name,) = [k for k in group if k.startswith(direction)]
                    (cell_name,) = list(group[lstm_name])
                    values = read(group[lstm_name][cell_name], "kernel", "recurrent_kernel", "bias")
                    cell = sub.cell
                    for key in ("kernel", "recurrent_kernel", "bias"):
                        assign(getattr(cell, key), values[key], f"{where}/{lstm_name}/{key}")
            elif layer.__class__.__name__ == "BatchNormalization":
                values = read(group, "gamma", "beta", "moving_mean", "moving_variance")
                for key, value in values.items():
                    assign(getattr(layer, key), value, f"{where}/{key}")
            else:  # Conv2D, Dense: kernel + bias, same layout in Keras 2 and 3
                values = read(group, "kernel", "bias")
                assign(layer.kernel, values["kernel"], f"{where}/kernel")
                assign(layer.bias, values["bias"], f"{where}/bias")
    return assigned


class AttentionRnnTeacher(MappedTeacher):
    native_labels = ATTENTION_RNN_LABELS
    batch_size = 128

    def __init__(self, name: str, path: Path, standardise: str = "clip"):
        if standardise not in ("clip", "global"):
            raise TeacherError(f"standardise must be 'clip' or 'global', not {standardise!r}")
        super().__init__()
        self.name = name
        self.path = _require_file(path)
        self.standardise = standardise
        self._model = None
        self._mel = None

    def features(self, audio: np.ndarray) -> np.ndarray:
        """``(n, 125, 80)``: |STFT| (1024/128, Hann, pad_end) -> 80 mel 40-8000 Hz -> log -> z-score.

        The z-score uses each clip's own mean and std (``standardise="clip"``) or
        ``ATTENTION_GLOBAL_STATS`` (``"global"``).
        """
        import tensorflow as tf

        if self._mel is None:
            self._mel = tf.signal.linear_to_mel_weight_matrix(ATTENTION_MELS, 513, SAMPLE_RATE_HZ, 40.0, 8000.0)
        stft = tf.signal.stft(tf.constant(audio), frame_length=1024, frame_step=128, fft_length=1024,
                              window_fn=tf.signal.hann_window, pad_end=True)
        log_mel = tf.math.log(tf.tensordot(tf.abs(stft), self._mel, 1) + 1e-6)
        if self.standardise == "global":
            mean, std = ATTENTION_GLOBAL_STATS
        else:
            mean = tf.reduce_mean(log_mel, axis=[1, 2], keepdims=True)
            std = tf.math.reduce_std(log_mel, axis=[1, 2], keepdims=True)
        return ((log_mel - mean) / std).numpy()

    def _load(self):
        model = build_attention_rnn()
        count = load_attention_rnn_weights(model, self.path)
        _LOGGER.info("%s: %d weight arrays from %s (%d parameters)", self.name, count, self.path,
                     model.count_params())
        return model

    def native_predict(self, audio: np.ndarray) -> np.ndarray:
        if self._model is None:
            self._model = self._load()
        return np.asarray(self._model.predict_on_batch(self.features(audio)), np.float32)


# --- ensembles, registry ------------------------------------------------------------------------

class Ensemble:
    """Weighted mean of the members' probabilities (weights default to equal)."""

    def __init__(self, teachers: Sequence[Teacher], weights: Sequence[float] | None = None):
        if not teachers:
            raise TeacherError("an ensemble needs at least one teacher")
        weights = np.ones(len(teachers)) if weights is None else np.asarray(weights, np.float64)
        if weights.shape != (len(teachers),) or np.any(weights < 0) or weights.sum() <= 0:
            raise TeacherError(f"ensemble weights must be {len(teachers)} non-negative numbers, not all zero")
        self.teachers = list(teachers)
        self.weights = weights / weights.sum()
        self.name = ",".join(t.name for t in self.teachers)

    def predict(self, audio: np.ndarray) -> np.ndarray:
        audio = as_clips(audio)
        total = np.zeros((len(audio), len(LABELS)), np.float64)
        for teacher, weight in zip(self.teachers, self.weights):
            total += weight * teacher.predict(audio)
        return _normalise_rows(total)

    def __repr__(self) -> str:
        return f"<ensemble {self.name}>"


def _arm(size: str) -> Callable[[Path], Teacher]:
    folder = "arm_hello_edge_dscnn"
    return lambda root: FrozenGraphTeacher(f"arm-{size.lower()}", root / folder / f"DS_CNN_{size}.pb",
                                           root / folder / "labels.txt")


REGISTRY: dict[str, Callable[[Path], Teacher]] = {
    "mlperf": lambda root: MlperfTeacher("mlperf", root / "mlperf_tiny_dscnn" / "kws_ref_model_float32.tflite"),
    "arm-s": _arm("S"),
    "arm-m": _arm("M"),
    "arm-l": _arm("L"),
    "attention-rnn": lambda root: AttentionRnnTeacher("attention-rnn", root / "attention_rnn" / "model-attRNN.h5"),
    "attention-rnn-global": lambda root: AttentionRnnTeacher(
        "attention-rnn-global", root / "attention_rnn" / "model-attRNN.h5", standardise="global"),
}
"""Teacher name -> factory taking the teachers folder."""


class RunTeacher:
    """A model trained by ``kws-train`` (e.g. a DS-CNN-L), fed our own features: ``run:PATH``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.name = f"run:{self.run_dir}"
        for name in ("model.keras", "settings.json"):
            if not (self.run_dir / name).is_file():
                raise TeacherError(f"teacher run {self.run_dir} has no {name}: train it with kws-train train first")
        self._model = None

    def predict(self, audio: np.ndarray) -> np.ndarray:
        import json

        import keras

        from kws.features import FeatureSettings, Mfcc
        from training.evaluate import predict_float

        audio = as_clips(audio)
        if self._model is None:
            settings = json.loads((self.run_dir / "settings.json").read_text())
            self._mfcc = Mfcc(FeatureSettings(**settings["train"]["features"]))
            labels = settings.get("labels", list(LABELS))
            self._mapping = label_mapping(labels)
            self._model = keras.models.load_model(self.run_dir / "model.keras")
        out = []
        for start in range(0, len(audio), 1000):
            features = self._mfcc.compute_batch(audio[start : start + 1000])
            out.append(predict_float(self._model, features) @ self._mapping)
        return _normalise_rows(np.concatenate(out).astype(np.float64))


RUN_PREFIX = "run:"


def teacher_names(spec: str) -> list[str]:
    """The member names of a teacher spec, checked (without loading anything)."""
    names = [part.strip() for part in str(spec).split(",") if part.strip()]
    if not names:
        raise TeacherError(f"no teacher named in {spec!r}: choose from {', '.join(REGISTRY)} or run:PATH")
    for name in names:
        if name not in REGISTRY and not name.startswith(RUN_PREFIX):
            raise TeacherError(f"unknown teacher '{name}': choose from {', '.join(REGISTRY)} or run:PATH")
    return names


def load_teacher(spec: str, root: str | Path | None = None) -> Teacher:
    """A teacher by name or ``run:PATH``, or an equal-weight ``Ensemble`` of a comma-separated list."""
    names = teacher_names(spec)
    folder = teachers_root(root)
    teachers = [RunTeacher(Path(name[len(RUN_PREFIX):])) if name.startswith(RUN_PREFIX) else REGISTRY[name](folder)
                for name in names]
    return teachers[0] if len(teachers) == 1 else Ensemble(teachers)
