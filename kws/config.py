"""The TOML configuration of ``kws listen`` and ``kws detect``.

Example::

    model = "kws12"                  # bundle name in models/, or a path (relative to this file); or a list
    device = "USB"                   # input device: index or part of its name (`kws devices`)
    keywords = ["yes", "stop"]       # only these fire (default: all)
    save_detections = "captures/_unknown_"   # the audio around each detection (relative to this file)

    [detector]
    stride_ms = 100
    smoothing_s = 0.3
    refractory_s = 1.0

    [thresholds]                     # per keyword; others keep the model's defaults
    stop = 0.8
    "kws12/on" = 0.9                 # MODEL/keyword: that model only; wins over a plain key

    [hooks]
    timeout_s = 10
    max_parallel = 4

    [hooks.commands]                 # keyword = argv list, or a list of argv lists; "*" = any keyword
    yes = ["/usr/local/bin/lights", "on"]
    stop = [["mpc", "stop"], ["sh", "-c", "echo stopped >> /tmp/kws.log"]]
    "*" = ["logger", "-t", "kws"]

    [mqtt]                           # detections to an MQTT broker; keywords as Home Assistant events
    host = "homeassistant.local"
    username = "kws"
    password = "secret"

    [webhook]                        # each detection POSTed as JSON
    url = "http://homeassistant.local:8123/api/webhook/kws-detected"

    [service]                        # kws listen as a long-running service
    status_interval_s = 300          # a status line in the log (and the status file) this often
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from kws.actions import ANY_KEYWORD, HookSettings, model_key, split_key
from kws.cli_common import load_toml
from kws.errors import ConfigError

if TYPE_CHECKING:
    from kws.mqtt import MqttSettings
    from kws.webhook import WebhookSettings

_LOGGER = logging.getLogger(__name__)

_TOP_KEYS = {"model", "device", "keywords", "save_detections", "detector", "thresholds", "hooks", "mqtt", "webhook",
             "service"}
_SERVICE_KEYS = {"status_interval_s"}
_DETECTOR_KEYS = {"stride_ms", "smoothing_s", "refractory_s"}
_HOOK_KEYS = {"timeout_s", "max_parallel", "commands"}
# key -> kind of value (see _typed_table); the fields of MqttSettings and WebhookSettings.
_MQTT_KEYS = {"host": "str", "port": "int", "topic_prefix": "str", "node_id": "str", "device_name": "str",
              "client_id": "str", "username": "str", "password": "str", "tls": "bool", "ca_file": "path",
              "cert_file": "path", "key_file": "path", "tls_insecure": "bool", "discovery": "bool",
              "discovery_prefix": "str", "qos": "int", "keepalive_s": "int", "connect_timeout_s": "number",
              "reconnect_max_s": "int", "queue_size": "int", "max_age_s": "number", "close_timeout_s": "number"}
_WEBHOOK_KEYS = {"url": "str", "timeout_s": "number", "retries": "int", "backoff_s": "number",
                 "headers": "str_table", "queue_size": "int", "max_age_s": "number", "close_timeout_s": "number"}


@dataclass(frozen=True)
class Config:
    """Settings from a config file; None means "not set here"."""

    models: tuple[str, ...] = ()
    """Bundle names or paths (``model``: one, or a list); empty = not set."""
    device: str | None = None
    keywords: tuple[str, ...] | None = None
    save_detections: Path | None = None
    """Folder for the audio around each detection (``kws listen``)."""
    detector: Mapping[str, float] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    hooks: HookSettings = field(default_factory=HookSettings)
    mqtt: MqttSettings | None = None
    """``[mqtt]``: publish detections to a broker (``kws listen``); None = no MQTT."""
    webhook: WebhookSettings | None = None
    """``[webhook]``: POST each detection to a URL (``kws listen``); None = no webhook."""
    status_interval_s: float | None = None
    """``[service] status_interval_s``: seconds between two status lines of ``kws listen``; None = not set here."""


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    return float(value)


def _argv_lists(where: str, value: Any) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        value = [value]
    if not isinstance(value, list) or not value or not all(
        isinstance(argv, list) and argv and all(isinstance(x, str) and x for x in argv) for argv in value
    ):
        raise ConfigError(f'{where} must be an argv list like ["cmd", "arg"] or a list of them')
    return tuple(tuple(argv) for argv in value)


def _typed_table(where: str, table: dict, kinds: Mapping[str, str], base: Path) -> dict[str, Any]:
    """The values of ``table`` (keys already checked) as ``kinds`` says: str, int, number, bool, path, str_table.

    A ``path`` is relative to ``base`` (the config file's folder).
    """
    options: dict[str, Any] = {}
    for key, value in table.items():
        kind, name = kinds[key], f"{where}.{key}"
        if kind == "number":
            options[key] = _number(name, value)
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
            options[key] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, not {value!r}")
            options[key] = value
        elif kind in ("str", "path"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
            options[key] = value if kind == "str" else base / Path(value).expanduser()
        elif kind == "str_table":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{name} must be a table of name = \"string\"")
            options[key] = dict(value)
        else:
            raise AssertionError(f"unknown kind {kind}")
    return options


def _network_table(path: Path, raw: dict, name: str, kinds: dict, required: str, what: str, settings_class):
    """``[name]`` as ``settings_class`` (None when absent): keys checked and typed by ``kinds``, ``required`` set."""
    if name not in raw:
        return None
    table = _check_keys(f"{path}: [{name}]", raw[name], set(kinds))
    if required not in table:
        raise ConfigError(f"{path}: [{name}] needs {required}, {what}")
    try:
        return settings_class(**_typed_table(f"{path}: {name}", table, kinds, path.parent))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _mqtt(path: Path, raw: dict) -> MqttSettings | None:
    from kws.mqtt import MqttSettings

    return _network_table(path, raw, "mqtt", _MQTT_KEYS, "host", "the broker's host name or address", MqttSettings)


def _webhook(path: Path, raw: dict) -> WebhookSettings | None:
    from kws.webhook import WebhookSettings

    return _network_table(path, raw, "webhook", _WEBHOOK_KEYS, "url", "where to POST each detection", WebhookSettings)


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return table


def load_config(path: str | Path) -> Config:
    path = Path(path)
    raw = _check_keys(str(path), load_toml(path), _TOP_KEYS)
    models = raw.get("model", ())
    if isinstance(models, str):
        models = [models]
    if "model" in raw and not (isinstance(models, list) and models and all(isinstance(m, str) and m for m in models)):
        raise ConfigError(f"{path}: model must be a bundle name or path, or a list of them")
    models = tuple(str((path.parent / m).resolve()) if "/" in m or m.endswith((".json", ".tflite")) else m
                   for m in models)
    device = raw.get("device")
    if device is not None and not isinstance(device, (str, int)):
        raise ConfigError(f"{path}: device must be an index or part of a device name")
    keywords = raw.get("keywords")
    if keywords is not None:
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ConfigError(f"{path}: keywords must be a list of strings")
        keywords = tuple(keywords)
    save_detections = raw.get("save_detections")
    if save_detections is not None:
        if not isinstance(save_detections, str) or not save_detections:
            raise ConfigError(f"{path}: save_detections must be the path of a folder")
        save_detections = path.parent / Path(save_detections).expanduser()
    detector = {k: _number(f"{path}: detector.{k}", v)
                for k, v in _check_keys(f"{path}: [detector]", raw.get("detector", {}), _DETECTOR_KEYS).items()}
    thresholds = raw.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ConfigError(f"{path}: [thresholds] must be a table of keyword = number")
    thresholds = {k: _number(f"{path}: thresholds.{k}", v) for k, v in thresholds.items()}
    hooks_raw = _check_keys(f"{path}: [hooks]", raw.get("hooks", {}), _HOOK_KEYS)
    commands_raw = hooks_raw.get("commands", {})
    if not isinstance(commands_raw, dict):
        raise ConfigError(f"{path}: [hooks.commands] must be a table of keyword = argv list")
    commands = {k: _argv_lists(f"{path}: hooks.commands.{k}", v) for k, v in commands_raw.items()}
    hook_options = {}
    if "timeout_s" in hooks_raw:
        hook_options["timeout_s"] = _number(f"{path}: hooks.timeout_s", hooks_raw["timeout_s"])
    if "max_parallel" in hooks_raw:
        hook_options["max_parallel"] = int(_number(f"{path}: hooks.max_parallel", hooks_raw["max_parallel"]))
    try:
        hooks = HookSettings(commands=commands, **hook_options)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    service = _check_keys(f"{path}: [service]", raw.get("service", {}), _SERVICE_KEYS)
    status_interval_s = None
    if "status_interval_s" in service:
        status_interval_s = _number(f"{path}: service.status_interval_s", service["status_interval_s"])
        if not status_interval_s > 0:
            raise ConfigError(f"{path}: service.status_interval_s must be positive (seconds), "
                              f"not {status_interval_s:g}")
    return Config(models=models, device=None if device is None else str(device), keywords=keywords,
                  save_detections=save_detections, detector=detector, thresholds=thresholds, hooks=hooks,
                  mqtt=_mqtt(path, raw), webhook=_webhook(path, raw), status_interval_s=status_interval_s)


def check_against_models(config: Config, models: Mapping[str, tuple[str, ...]], where: str) -> None:
    """Keys in ``[thresholds]`` and ``[hooks.commands]`` must name keywords of the loaded models.

    ``models`` maps each loaded model's name to its keywords. A plain ``keyword``
    must be a keyword of at least one model; ``MODEL/keyword`` needs ``MODEL``
    loaded and knowing ``keyword``. ``*`` and ``MODEL/*`` are allowed for hooks.
    """
    def known(model: str) -> str:
        return f"{model} knows {', '.join(models[model])}"

    for name, section in (("thresholds", config.thresholds), ("hooks.commands", config.hooks.commands)):
        wildcard = {ANY_KEYWORD} if name == "hooks.commands" else set()
        unknown = []
        for key in section:
            model, keyword = split_key(key)
            if model is None:
                if keyword not in wildcard and not any(keyword in words for words in models.values()):
                    unknown.append(key)
            elif model not in models:
                raise ConfigError(f"{where}: {name} names {key}, but no model {model} is loaded "
                                  f"(loaded: {', '.join(models)}): load it with --model, or remove the key")
            elif keyword not in wildcard and keyword not in models[model]:
                raise ConfigError(f"{where}: {name} names {key}, but model {model} has no keyword {keyword} "
                                  f"({known(model)})")
        if unknown and len(models) == 1:
            raise ConfigError(f"{where}: {name} names {', '.join(sorted(unknown))}, not keyword(s) of the model "
                              f"({', '.join(next(iter(models.values())))})")
        if unknown:
            raise ConfigError(f"{where}: {name} names {', '.join(sorted(unknown))}, not keyword(s) of any "
                              f"loaded model ({'; '.join(known(m) for m in models)})")


def for_model(section: Mapping[str, Any], model: str, keywords: tuple[str, ...]) -> dict[str, Any]:
    """The values of a ``keyword``-keyed table that apply to ``model``: plain keys, then its ``MODEL/keyword`` keys."""
    values = {k: v for k, v in section.items() if k in keywords}
    values.update({k: section[model_key(model, k)] for k in keywords if model_key(model, k) in section})
    return values
