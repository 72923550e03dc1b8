"""Pieces both command-line tools share: logging set-up and TOML reading."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from kws.errors import ConfigError


def configure_logging(verbosity: int) -> None:
    """0 = info, 1+ = debug, -1 = warnings, -2 = errors only. Logs go to stderr."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(-2, min(verbosity, 1)), logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
