"""What happens on a detection: JSON lines on stdout, hook commands (MQTT and webhooks: ``kws.mqtt``, ``kws.webhook``).

Actions run on their own thread (``Dispatcher``), never on the audio path.
Each action has ``handle(event)``, ``close()`` and ``accepts``: the type of
event it takes (a ``Detection`` unless it says otherwise). ``handle`` must not
block: an action that waits on something (a process, the network) does so on
threads of its own, with a bounded backlog.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Mapping, Sequence

from kws.detector import Detection
from kws.errors import ConfigError

if TYPE_CHECKING:
    from kws.config import Config

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
    """Hooks running at once; a hook due while all are busy is not run (and logged), never queued."""

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


STDERR_TAIL_BYTES = 4096
"""Of a hook's stderr only the last this many bytes are kept (the last line goes into the log)."""
STDERR_GRACE_S = 0.5
"""After a hook exits, its stderr is read this much longer (a child it left running may hold it open)."""
_POLL_S = 0.1


class HookAction:
    """Runs each matching hook on a thread of its own, with the detection in env and on stdin.

    At most ``max_parallel`` hooks run at once: ``handle`` starts a hook only if a
    slot is free and otherwise drops it, with one log line per burst of drops, so
    a flood of detections cannot pile up processes or a backlog. stdout goes to
    /dev/null and only a bounded tail of stderr is kept, so a chatty hook can
    neither block nor eat memory.
    """

    accepts = Detection

    def __init__(self, settings: HookSettings):
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_parallel)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._processes: set[subprocess.Popen] = set()
        self._aborted = False
        """``abort`` was called: kws is stopping; no hook starts any more."""
        self._dropped = 0
        """Hooks dropped in the current burst (since a hook last started)."""

    def handle(self, detection: Detection) -> None:
        for argv in self.settings.for_keyword(detection.keyword, detection.model):
            if self._aborted:
                _LOGGER.warning("hook %s for '%s' not run: kws is stopping", argv[0], detection.keyword)
                continue
            if not self._slots.acquire(blocking=False):
                self._drop(argv, detection)
                continue
            self._end_burst()
            thread = threading.Thread(target=self._run_in_slot, args=(argv, detection), name="kws-hook")
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _drop(self, argv: Sequence[str], detection: Detection) -> None:
        with self._lock:
            self._dropped += 1
            first = self._dropped == 1
        if first:
            _LOGGER.warning("hook %s for '%s' not run: %d hook(s) already running (hooks.max_parallel); "
                            "hooks are dropped until one finishes", argv[0], detection.keyword,
                            self.settings.max_parallel)

    def _end_burst(self) -> None:
        """A hook starts (or we close): say how many were dropped since the last one started."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if dropped > 1:  # (a single one was logged as it happened)
            _LOGGER.warning("%d hook run(s) were dropped while %d hook(s) were running (hooks.max_parallel)",
                            dropped, self.settings.max_parallel)

    def _run_in_slot(self, argv: Sequence[str], detection: Detection) -> None:
        try:
            self._run(argv, detection)
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

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
        with self._lock:
            self._processes.add(process)
            aborted = self._aborted
        if aborted:  # abort() ran while it started
            _kill_group(process)
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            _write_and_close(process.stdin, payload)
            stderr, timed_out = _stderr_tail(process, deadline)
            if timed_out:
                _kill_group(process)
                process.wait()
                _LOGGER.error("hook %s for '%s' ran longer than %.1f s and was killed", name, detection.keyword,
                              self.settings.timeout_s)
                return
        finally:
            process.stderr.close()
            with self._lock:
                self._processes.discard(process)
        if self._aborted and process.returncode == -signal.SIGKILL:
            _LOGGER.warning("hook %s for '%s' was killed: kws is stopping", name, detection.keyword)
            return
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:]
            _LOGGER.error("hook %s for '%s' failed with exit status %d%s", name, detection.keyword,
                          process.returncode, f": {tail[0][-300:]}" if tail else "")
        else:
            _LOGGER.info("hook %s for '%s' done", name, detection.keyword)

    def abort(self) -> None:
        """kws is stopping: kill the running hooks (with their process groups) and start no more.

        ``close`` then returns at once instead of waiting up to ``timeout_s`` for them.
        """
        with self._lock:
            self._aborted = True
            processes = list(self._processes)
        for process in processes:
            _kill_group(process)

    def close(self) -> None:
        """Waits for the running hooks (each ends by its ``timeout_s``, or at once after ``abort``)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        self._end_burst()


def _write_and_close(pipe: IO[bytes], payload: bytes) -> None:
    """One short line to a hook's stdin: it fits the pipe's buffer, so this never blocks."""
    try:
        pipe.write(payload)
        pipe.flush()
    except OSError:  # the hook exited (or closed stdin) without reading it
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _stderr_tail(process: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
    """Reads ``process``'s stderr until it exits, keeping the last ``STDERR_TAIL_BYTES``.

    Returns ``(tail, timed_out)``; ``timed_out`` if it was still running at ``deadline``
    (monotonic). A process that exits but leaves a child holding stderr open is done.
    """
    fd = process.stderr.fileno()
    tail = bytearray()
    exited_at = None
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if process.poll() is not None:
                exited_at = exited_at if exited_at is not None else now
                if now - exited_at >= STDERR_GRACE_S:
                    break
            elif now >= deadline:
                return bytes(tail), True
            if not selector.select(_POLL_S if exited_at is not None else min(_POLL_S, deadline - now)):
                continue
            data = os.read(fd, 65536)
            if not data:  # EOF: every writer closed it
                break
            tail += data
            del tail[:-STDERR_TAIL_BYTES]
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(tail), True
    return bytes(tail), False


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Replace:
    """On the dispatcher's queue: the actions for the events after it."""

    def __init__(self, actions: Sequence):
        self.actions = list(actions)


class Dispatcher:
    """Hands events (detections, and what else the actions accept) to the actions on a thread of its own.

    Each event goes, in order, to every action whose ``accepts`` type it is.
    ``submit`` is a single ``SimpleQueue.put``, which a signal handler raising in
    the main thread cannot cut half-way, so a SIGTERM never loses a wake-up.
    ``replace`` swaps the actions between two events (a reload).
    """

    def __init__(self, actions: Sequence):
        self.actions = list(actions)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._retiring: list[tuple[threading.Thread, list]] = []
        """Actions replaced and being closed, each batch on a thread of its own."""
        self._aborting = False
        self._thread = threading.Thread(target=self._loop, name="kws-actions", daemon=True)
        self._thread.start()

    def submit(self, event) -> None:
        self._queue.put(event)

    def replace(self, actions: Sequence) -> None:
        """The events submitted from now on go to ``actions``.

        The old actions that are not among them still get every event submitted before;
        then they are closed on a thread of their own, so what they have under way
        (a hook, a message to send) finishes without holding up new events.
        """
        self._queue.put(_Replace(actions))

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if isinstance(event, _Replace):
                self._install(event.actions)
                continue
            for action in self.actions:
                if isinstance(event, getattr(action, "accepts", Detection)):
                    action.handle(event)

    def _install(self, actions: list) -> None:
        old = [a for a in self.actions if not any(a is b for b in actions)]
        self.actions = actions
        if self._aborting:
            _abort_all(actions)
        if not old:
            return
        thread = threading.Thread(target=_close_all, args=(old,), name="kws-retire", daemon=True)
        with self._lock:
            self._retiring = [(t, a) for t, a in self._retiring if t.is_alive()] + [(thread, old)]
        thread.start()

    def close(self, abort: bool = False) -> None:
        """Hands on the events submitted so far, then closes every action (all at once) and waits for them.

        ``abort`` (kws is stopping): what the actions run stops now instead of finishing
        (hooks are killed, ``HookAction.abort``); events still queued reach the actions
        that can take them at once (JSON lines), network actions close within their own
        ``close_timeout_s``.
        """
        if abort:
            self._aborting = True
            _abort_all(self.actions)
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            retiring = list(self._retiring)
        if abort:
            _abort_all(self.actions + [a for _, batch in retiring for a in batch])
        _close_all(self.actions)
        for thread, _ in retiring:
            thread.join()


def _abort_all(actions: Sequence) -> None:
    for action in actions:
        abort = getattr(action, "abort", None)
        if abort is not None:
            abort()


def _close_all(actions: Sequence) -> None:
    """``close()`` every action, each on a thread of its own, so the slowest sets the time it takes, not their sum."""
    if len(actions) == 1:
        actions[0].close()
        return
    threads = [threading.Thread(target=action.close, name="kws-close", daemon=True) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


DROP_REPORT_S = 10.0
"""At most one log line per this many seconds about detections an action had to drop."""


class DropReport:
    """Counts the detections an action drops, and says so in at most one log line per ``interval_s``.

    Thread-safe. The first drop is logged at once; later ones are summed into the next
    line, and ``flush`` (on close) logs what is left.
    """

    def __init__(self, what: str, logger: logging.Logger, interval_s: float = DROP_REPORT_S):
        self.what = what
        """Who drops, for the log line ("MQTT (broker ...)", "webhook https://...")."""
        self.logger = logger
        self.interval_s = interval_s
        self.total = 0
        """Detections dropped since the start."""
        self._lock = threading.Lock()
        self._unreported: dict[str, int] = {}
        """Reason -> detections dropped for it since the last line."""
        self._reported_at = -float("inf")

    def add(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.total += count
            self._unreported[reason] = self._unreported.get(reason, 0) + count
            if time.monotonic() - self._reported_at < self.interval_s:
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            unreported, self._unreported = self._unreported, {}
            total = self.total
            if unreported:
                self._reported_at = time.monotonic()
        if unreported:
            self.logger.warning("%s dropped %d detection(s): %s; %d in all", self.what, sum(unreported.values()),
                                "; ".join(f"{n} {reason}" for reason, n in unreported.items()), total)


def configured_actions(config: Config, keywords: Mapping[str, Sequence[str]], running: Sequence = ()) -> list:
    """The network actions the config file asks for (``[mqtt]``, ``[webhook]``), ready to take detections.

    ``keywords`` maps each model that runs to the keywords it may fire (MQTT announces
    them to Home Assistant). Raises ``ConfigError`` if one cannot be set up, e.g. paho-mqtt
    missing; the network itself is reached in the background and never fails this.
    ``running`` are the actions in use before a reload: one set up exactly as asked is
    returned instead of a new one (so an MQTT connection stays up across the reload).
    """
    actions = []
    if config.mqtt is not None:
        from kws.mqtt import MqttAction

        announced = {model: tuple(words) for model, words in keywords.items()}
        same = [a for a in running if isinstance(a, MqttAction) and a.settings == config.mqtt
                and a.keywords == announced]
        actions.append(same[0] if same else MqttAction(config.mqtt, keywords))
    if config.webhook is not None:
        from kws.webhook import WebhookAction

        same = [a for a in running if isinstance(a, WebhookAction) and a.settings == config.webhook]
        actions.append(same[0] if same else WebhookAction(config.webhook))
    return actions
