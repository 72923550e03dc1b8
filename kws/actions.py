"""What happens on a detection: JSON lines on stdout, hook commands.

Actions run on their own thread (``Dispatcher``), never on the audio path.
Each action has ``handle(event)``, ``close()`` and ``accepts``: the type of
event it takes (a ``Detection`` unless it says otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Mapping, Sequence

from kws.detector import Detection
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

ANY_KEYWORD = "*"
"""Hook key that matches every keyword."""
MODEL_SEPARATOR = "/"
"""``MODEL/keyword`` config keys apply to that model only, and win over a plain ``keyword`` key."""


def model_key(model: str, keyword: str) -> str:
    """The config key that names ``keyword`` of ``model`` only."""
    return f"{model}{MODEL_SEPARATOR}{keyword}"


def split_key(key: str) -> tuple[str | None, str]:
    """``"kws12/on"`` -> ``("kws12", "on")``; ``"on"`` -> ``(None, "on")``."""
    model, separator, keyword = key.rpartition(MODEL_SEPARATOR)
    return (model, keyword) if separator else (None, key)


class JsonLinesAction:
    """One JSON object per detection, one line each, flushed at once."""

    accepts = Detection

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stdout

    def handle(self, detection: Detection) -> None:
        try:
            self.stream.write(json.dumps(detection.to_dict()) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            _LOGGER.warning("stdout closed by the reader; detections are no longer printed")
            self.stream = open(os.devnull, "w")

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class HookSettings:
    """Commands to run per keyword (argv lists, no shell) and their limits."""

    commands: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    """Keyword (or ``*``), or ``MODEL/keyword`` (or ``MODEL/*``) -> argv lists to run."""
    timeout_s: float = 10.0
    """A hook still running after this is killed (with its process group)."""
    max_parallel: int = 4
    """Hooks running at once; more wait their turn."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"hook timeout_s={self.timeout_s}: must be positive")
        if self.max_parallel < 1:
            raise ConfigError("hook max_parallel must be at least 1")

    def for_keyword(self, keyword: str, model: str | None = None) -> list[tuple[str, ...]]:
        """The keyword's commands, then the any-keyword ones; ``MODEL/...`` keys win over plain ones."""

        def commands(key: str) -> tuple[tuple[str, ...], ...]:
            if model is not None and model_key(model, key) in self.commands:
                return self.commands[model_key(model, key)]
            return self.commands.get(key, ())

        return list(commands(keyword)) + list(commands(ANY_KEYWORD))


def hook_environment(detection: Detection) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KWS_KEYWORD=detection.keyword,
        KWS_SCORE=f"{detection.score:.4f}",
        KWS_TIME=detection.time.isoformat(timespec="milliseconds"),
        KWS_OFFSET_S=f"{detection.offset_s:.3f}",
        KWS_MODEL=detection.model,
    )
    return env


class HookAction:
    """Runs each matching hook in a worker thread with the detection in env and on stdin."""

    accepts = Detection

    def __init__(self, settings: HookSettings):
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.max_parallel, thread_name_prefix="kws-hook")

    def handle(self, detection: Detection) -> None:
        for argv in self.settings.for_keyword(detection.keyword, detection.model):
            self._pool.submit(self._run, argv, detection)

    def _run(self, argv: Sequence[str], detection: Detection) -> None:
        name = argv[0]
        payload = (json.dumps(detection.to_dict()) + "\n").encode()
        try:
            process = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, env=hook_environment(detection),
                                       start_new_session=True)
        except OSError as error:
            _LOGGER.error("hook %s for '%s' could not start: %s", name, detection.keyword, error.strerror or error)
            return
        try:
            _, stderr = process.communicate(payload, timeout=self.settings.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            _LOGGER.error("hook %s for '%s' ran longer than %.1f s and was killed", name, detection.keyword,
                          self.settings.timeout_s)
            return
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
            _LOGGER.error("hook %s for '%s' failed with exit status %d%s", name, detection.keyword,
                          process.returncode, f": {tail[0]}" if tail else "")
        else:
            _LOGGER.info("hook %s for '%s' done", name, detection.keyword)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Dispatcher:
    """Hands events (detections, and what else the actions accept) to the actions on a thread of its own.

    Each event goes, in order, to every action whose ``accepts`` type it is.
    ``submit`` is a single ``SimpleQueue.put``, which a signal handler raising in
    the main thread cannot cut half-way, so a SIGTERM never loses a wake-up.
    """

    def __init__(self, actions: Sequence):
        self.actions = list(actions)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="kws-actions", daemon=True)
        self._thread.start()

    def submit(self, event) -> None:
        self._queue.put(event)

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for action in self.actions:
                if isinstance(event, getattr(action, "accepts", Detection)):
                    action.handle(event)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        for action in self.actions:
            action.close()
