"""The TOML configuration of ``kws listen`` and ``kws detect``.

Example::

    model = "kws12"                  # bundle name in models/, or a path (relative to this file)
    device = "USB"                   # input device: index or part of its name (`kws devices`)
    keywords = ["yes", "stop"]       # only these fire (default: all)

    [detector]
    stride_ms = 100
    smoothing_s = 0.3
    refractory_s = 1.0

    [thresholds]                     # per keyword; others keep the model's defaults
    stop = 0.8

    [hooks]
    timeout_s = 10
    max_parallel = 4

    [hooks.commands]                 # keyword = argv list, or a list of argv lists; "*" = any keyword
    yes = ["/usr/local/bin/lights", "on"]
    stop = [["mpc", "stop"], ["sh", "-c", "echo stopped >> /tmp/kws.log"]]
    "*" = ["logger", "-t", "kws"]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kws.actions import HookSettings
from kws.cli_common import load_toml
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

_TOP_KEYS = {"model", "device", "keywords", "detector", "thresholds", "hooks"}
_DETECTOR_KEYS = {"stride_ms", "smoothing_s", "refractory_s"}
_HOOK_KEYS = {"timeout_s", "max_parallel", "commands"}


@dataclass(frozen=True)
class Config:
    """Settings from a config file; None means "not set here"."""

    model: str | None = None
    device: str | None = None
    keywords: tuple[str, ...] | None = None
    detector: Mapping[str, float] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    hooks: HookSettings = field(default_factory=HookSettings)


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
    model = raw.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{path}: model must be a bundle name or path")
        if "/" in model or model.endswith((".json", ".tflite")):
            model = str((path.parent / model).resolve())
    device = raw.get("device")
    if device is not None and not isinstance(device, (str, int)):
        raise ConfigError(f"{path}: device must be an index or part of a device name")
    keywords = raw.get("keywords")
    if keywords is not None:
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ConfigError(f"{path}: keywords must be a list of strings")
        keywords = tuple(keywords)
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
    return Config(model=model, device=None if device is None else str(device), keywords=keywords,
                  detector=detector, thresholds=thresholds, hooks=hooks)


def check_against_model(config: Config, labels: tuple[str, ...], keywords: tuple[str, ...], where: str) -> None:
    """Names in the config must be keywords of the model (``*`` is allowed for hooks)."""
    for name, section in (("thresholds", config.thresholds), ("hooks.commands", config.hooks.commands)):
        unknown = sorted(set(section) - set(keywords) - ({"*"} if name == "hooks.commands" else set()))
        if unknown:
            raise ConfigError(f"{where}: {name} names {', '.join(unknown)}, not keyword(s) of the model "
                              f"({', '.join(keywords)})")
