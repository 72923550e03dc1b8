"""Tell systemd how the service is doing (``sd_notify``), without libsystemd.

Under ``Type=notify`` (``systemd/kws.service``) systemd passes the path of a datagram socket
in ``$NOTIFY_SOCKET`` and waits for ``READY=1``; with ``WatchdogSec=`` it also passes
``$WATCHDOG_USEC`` and kills the service when no ``WATCHDOG=1`` arrives within that time.
Outside systemd (a terminal, the tests) ``$NOTIFY_SOCKET`` is unset and every call does nothing.

Use::

    notifier = Notifier.from_environment()
    ...                                   # load models, open the microphone
    notifier.ready()
    for chunk in source.chunks():         # the consumer side of the audio loop
        notifier.watchdog()               # cheap: sends at most once per watchdog_interval_s
        ...
    # on SIGHUP:
    notifier.reloading(); ...reload...; notifier.ready()
    # on SIGTERM:
    notifier.stopping()

Sending never blocks and never raises: a failure is logged once (as a warning, later ones at
debug level) and the call returns False. See sd_notify(3) for the protocol; ``MONOTONIC_USEC``
with ``RELOADING=1`` is what systemd 253 and newer expect, and older ones ignore it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Mapping

_LOGGER = logging.getLogger(__name__)

WATCHDOG_PINGS_PER_TIMEOUT = 2
"""Ping the watchdog this many times per ``WatchdogSec`` (sd_watchdog_enabled(3) advises half the timeout)."""


def _address(value: str) -> str | bytes | None:
    """The socket address of a ``$NOTIFY_SOCKET`` value: a path, or an abstract name ("@name"); None if neither."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _watchdog_timeout_s(environ: Mapping[str, str]) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, if it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Messages to systemd's notification socket; every method is a no-op without one.

    ``socket_path`` is the value of ``$NOTIFY_SOCKET`` (a path, or "@name" for an abstract
    socket), ``watchdog_timeout_s`` that of ``$WATCHDOG_USEC`` in seconds (None: no watchdog).
    Safe to call from several threads.
    """

    def __init__(self, socket_path: str | None = None, watchdog_timeout_s: float | None = None):
        self.socket_path = socket_path or None
        self.watchdog_timeout_s = watchdog_timeout_s if watchdog_timeout_s and watchdog_timeout_s > 0 else None
        self._address = _address(self.socket_path) if self.socket_path else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False
        self._last_watchdog = -float("inf")
        if self.socket_path and self._address is None:
            self._fail(f"NOTIFY_SOCKET={self.socket_path!r} is neither a path nor an @abstract name")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        """The notifier systemd set up for this process: ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``, ``$WATCHDOG_PID``."""
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET"), _watchdog_timeout_s(environ))

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to send to."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``); None when there is no watchdog."""
        if self.watchdog_timeout_s is None or not self.enabled:
            return None
        return self.watchdog_timeout_s / WATCHDOG_PINGS_PER_TIMEOUT

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=value`` assignments); True if it was sent."""
        if self._address is None:
            return False
        data = message.encode("utf-8", "replace")
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock = self._socket
            sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError as error:
            self._fail(f"cannot notify systemd through {self.socket_path} ({error}); "
                       "is the service Type=notify with NotifyAccess=main, and is this its main process?")
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is done: ``READY=1``, with an optional status line."""
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self) -> bool:
        """A reload has begun (send ``ready()`` when it is done): ``RELOADING=1`` and ``MONOTONIC_USEC``."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutting down: ``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``: ``STATUS=...``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self, force: bool = False) -> bool:
        """``WATCHDOG=1``, at most once per ``watchdog_interval_s`` unless ``force``; True if sent.

        Call it as often as you like from the loop that must keep running.
        """
        interval_s = self.watchdog_interval_s
        if interval_s is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_watchdog < interval_s:
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd gives up on a start, reload or stop: ``EXTEND_TIMEOUT_USEC``."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _fail(self, message: str) -> None:
        _LOGGER.log(logging.DEBUG if self._failed else logging.WARNING, "%s", message)
        self._failed = True

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_line(text: str) -> str:
    """A status text that cannot smuggle further assignments into the message."""
    return " ".join(str(text).splitlines())


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one message to ``$NOTIFY_SOCKET``; does nothing (False) when it is unset."""
    with Notifier.from_environment(environ) as notifier:
        return notifier.notify(message)
