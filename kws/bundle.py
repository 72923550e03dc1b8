"""Model bundles: ``NAME.tflite`` beside ``NAME.json``, validated on load.

The JSON manifest records everything the runtime needs; nothing about a model is
hard-coded elsewhere. ``load_bundle`` checks all of it and raises ``BundleError``
with one line naming the file and what to do.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kws.errors import BundleError, FeatureSettingsError
from kws.features import FeatureSettings

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MODEL = "kws12"
"""Name of the bundled default model in ``models/``."""
BACKGROUND_PREFIX = "_"
"""Labels starting with this (``_silence_``, ``_unknown_``) never fire."""


def models_dir() -> Path:
    """Where bundled models live: ``kws/models`` in a wheel, ``models/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent / "models"):
        if candidate.is_dir():
            return candidate
    return here.parent / "models"


@dataclass(frozen=True)
class Quantization:
    """How one tensor maps to real values: ``real = (q - zero_point) * scale``."""

    dtype: str
    scale: float
    zero_point: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle. ``model_content`` is the ``.tflite`` file's bytes."""

    name: str
    json_path: Path
    tflite_path: Path
    labels: tuple[str, ...]
    features: FeatureSettings
    window_frames: int
    input: Quantization
    output: Quantization
    thresholds: Mapping[str, float]
    smoothing_s: float
    refractory_s: float
    sha256: str
    model_content: bytes = field(repr=False)
    architecture: str = ""
    parameters: int | None = None
    macs: int | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    """How the thresholds were chosen (``kws-train calibrate``); empty if they were not calibrated."""

    @property
    def keywords(self) -> tuple[str, ...]:
        """Labels that can fire."""
        return tuple(label for label in self.labels if not label.startswith(BACKGROUND_PREFIX))

    @property
    def window_samples(self) -> int:
        return self.features.samples_for(self.window_frames)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.features.sample_rate_hz

    @property
    def size_bytes(self) -> int:
        return len(self.model_content)


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """A bundle's ``.json``: from a path to either file of the bundle, or a name in ``models/``."""
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model)
    if path.suffix == ".tflite":
        return path.with_suffix(".json")
    if path.suffix == ".json" or path.parent != Path("."):
        return path
    return models_dir() / f"{path.name}.json"


def sha256_of(data: bytes) -> str:
    return _sha256()(data).hexdigest()


def _sha256():
    """CPython's own SHA-256 when it has one: ``hashlib`` would map OpenSSL's libcrypto (3 MB of resident memory
    in the daemon) to hash a 50 KB model."""
    for module in ("_sha2", "_sha256"):  # (Python 3.12+, 3.11)
        try:
            return importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256


def _require(manifest: Mapping[str, Any], key: str, kind: type | tuple, where: Path) -> Any:
    if key not in manifest:
        raise BundleError(f"model manifest {where} lacks '{key}': re-export the model with kws-train export")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BundleError(f"model manifest {where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _quantization(manifest: Mapping[str, Any], key: str, where: Path) -> Quantization:
    spec = _require(manifest, key, dict, where)
    try:
        return Quantization(
            dtype=str(spec["dtype"]),
            scale=float(spec["scale"]),
            zero_point=int(spec["zero_point"]),
            shape=tuple(int(d) for d in spec["shape"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"model manifest {where}: '{key}' needs dtype, scale, zero_point and shape ({error})") from None


def load_bundle(model: str | os.PathLike | None = None, check_interpreter: bool = True) -> Bundle:
    """Load and validate a bundle; ``model`` as for ``resolve_model_path``."""
    json_path = resolve_model_path(model)
    if not json_path.is_file():
        raise BundleError(f"model manifest {json_path} not found: give --model a bundle's .json or .tflite path, or a name in {models_dir()}")
    try:
        manifest = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"model manifest {json_path} is not valid JSON ({error}): restore it from the release or re-export it") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"model manifest {json_path} must hold a JSON object")
    version = _require(manifest, "format_version", int, json_path)
    if version != FORMAT_VERSION:
        raise BundleError(f"model manifest {json_path} has format_version {version}; this kws reads {FORMAT_VERSION}: upgrade kws")

    tflite_path = json_path.parent / _require(manifest, "tflite", str, json_path)
    if not tflite_path.is_file():
        raise BundleError(f"model file {tflite_path} (named by {json_path}) not found: put the .tflite beside its .json")
    content = tflite_path.read_bytes()
    expected = _require(manifest, "sha256", str, json_path)
    actual = sha256_of(content)
    if actual != expected:
        raise BundleError(
            f"model file {tflite_path} does not match its manifest (sha256 {actual[:12]}..., expected {expected[:12]}...): "
            "the file is corrupt or from another model; restore the pair"
        )

    labels = _require(manifest, "labels", list, json_path)
    if not labels or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise BundleError(f"model manifest {json_path}: 'labels' must be distinct non-empty strings")
    try:
        features = FeatureSettings.from_dict(_require(manifest, "features", dict, json_path))
    except FeatureSettingsError as error:
        raise BundleError(f"model manifest {json_path}: {error}") from None
    window_frames = _require(manifest, "window_frames", int, json_path)
    if window_frames < 1:
        raise BundleError(f"model manifest {json_path}: 'window_frames' must be positive")
    input_q = _quantization(manifest, "input", json_path)
    output_q = _quantization(manifest, "output", json_path)
    if input_q.shape[1:3] != (window_frames, features.n_mfcc):
        raise BundleError(
            f"model manifest {json_path}: input shape {list(input_q.shape)} does not fit "
            f"{window_frames} frames x {features.n_mfcc} coefficients"
        )
    if output_q.shape[-1] != len(labels):
        raise BundleError(
            f"model manifest {json_path}: {len(labels)} labels but the output has {output_q.shape[-1]} scores"
        )

    detector = _require(manifest, "detector", dict, json_path)
    thresholds = detector.get("thresholds", {})
    keywords = [x for x in labels if not x.startswith(BACKGROUND_PREFIX)]
    if not isinstance(thresholds, dict) or set(thresholds) != set(keywords):
        raise BundleError(f"model manifest {json_path}: detector.thresholds must give one threshold per keyword ({', '.join(keywords)})")
    for word, value in thresholds.items():
        if not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise BundleError(f"model manifest {json_path}: threshold for '{word}' must be in (0, 1]")
    try:
        smoothing_s = float(detector.get("smoothing_s", 0.0))
        refractory_s = float(detector.get("refractory_s", 1.0))
    except (TypeError, ValueError):
        raise BundleError(f"model manifest {json_path}: detector.smoothing_s and refractory_s must be numbers") from None

    calibration = _calibration(manifest, json_path)

    bundle = Bundle(
        name=str(manifest.get("name", json_path.stem)),
        json_path=json_path,
        tflite_path=tflite_path,
        labels=tuple(labels),
        features=features,
        window_frames=window_frames,
        input=input_q,
        output=output_q,
        thresholds={k: float(v) for k, v in thresholds.items()},
        smoothing_s=smoothing_s,
        refractory_s=refractory_s,
        sha256=actual,
        model_content=content,
        architecture=str(manifest.get("architecture", "")),
        parameters=manifest.get("parameters"),
        macs=manifest.get("macs"),
        training=manifest.get("training", {}),
        metrics=manifest.get("metrics", {}),
        calibration=calibration,
    )
    if check_interpreter:
        check_model(bundle)
    return bundle


CALIBRATION_NUMBERS = ("threshold", "target_fa_per_hour", "fa_per_hour", "negative_hours")
"""Fields of the optional ``calibration`` object that must be numbers when present."""


def _calibration(manifest: Mapping[str, Any], where: Path) -> Mapping[str, Any]:
    """The optional ``calibration`` object written by ``kws-train calibrate``; {} when absent."""
    calibration = manifest.get("calibration", {})
    if not isinstance(calibration, dict):
        raise BundleError(f"model manifest {where}: 'calibration' must be a JSON object (or absent)")
    for key in CALIBRATION_NUMBERS:
        value = calibration.get(key, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BundleError(f"model manifest {where}: calibration.{key} must be a number; "
                              "recalibrate with kws-train calibrate or remove 'calibration'")
    return calibration


def check_model(bundle: Bundle) -> None:
    """Load the ``.tflite`` into the interpreter and compare its tensors with the manifest."""
    from kws.interpreter import make_interpreter

    try:
        interpreter = make_interpreter(bundle.model_content)
    except (ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BundleError(f"model file {bundle.tflite_path} is not a loadable TFLite model ({reason}): restore or re-export it") from None
    for key, spec, details in (
        ("input", bundle.input, interpreter.get_input_details()),
        ("output", bundle.output, interpreter.get_output_details()),
    ):
        if len(details) != 1:
            raise BundleError(f"model file {bundle.tflite_path} has {len(details)} {key} tensors; kws needs exactly one")
        tensor = details[0]
        shape = tuple(int(d) for d in tensor["shape"])
        dtype = tensor["dtype"].__name__
        scale, zero = tensor["quantization"]
        if shape != spec.shape or dtype != spec.dtype:
            raise BundleError(
                f"model {bundle.tflite_path}: {key} tensor is {dtype}{list(shape)} but the manifest says {spec.dtype}{list(spec.shape)}"
            )
        if abs(scale - spec.scale) > 1e-6 * max(1.0, abs(scale)) or zero != spec.zero_point:
            raise BundleError(
                f"model {bundle.tflite_path}: {key} quantization (scale {scale}, zero point {zero}) differs from the manifest"
            )


def write_bundle(directory: str | os.PathLike, name: str, model_content: bytes, manifest: Mapping[str, Any]) -> Path:
    """Write ``NAME.tflite`` and ``NAME.json`` atomically; fills in ``tflite``, ``sha256``, ``size_bytes``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full = dict(manifest)
    full.update(format_version=FORMAT_VERSION, name=name, tflite=f"{name}.tflite",
                sha256=sha256_of(model_content), size_bytes=len(model_content))
    ordered = {"format_version": full.pop("format_version"), "name": full.pop("name"), **full}
    atomic_write(directory / f"{name}.tflite", model_content)
    json_path = directory / f"{name}.json"
    atomic_write(json_path, (json.dumps(ordered, indent=2) + "\n").encode())
    return json_path


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else the usual 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
