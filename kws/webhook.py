"""Webhook: each detection POSTed as JSON (``Detection.to_dict()``) to a URL. Standard library only.

A thread of its own sends them one at a time, in order, from a bounded queue
(when full, the oldest is dropped), with retries and exponential backoff; a slow
or dead server never holds up detection or the other actions. A detection that
waited longer than ``max_age_s`` is dropped rather than sent late. Each failure
is one log line; the URL's path and query (a Home Assistant webhook id is a
secret) never appear in the log.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping

from kws import __version__
from kws.actions import DropReport
from kws.detector import Detection
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""HTTP answers after which the same request is tried again; other errors are final."""
BACKOFF_MAX_S = 30.0
"""The wait between two attempts grows no longer than this."""
RESPONSE_BYTES = 65536
"""Of an answer's body at most this much is read (and ignored)."""
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class WebhookSettings:
    """Where detections are POSTed and the limits of trying (``[webhook]`` in the config file)."""

    url: str
    """http:// or https:// URL that gets one POST per detection."""
    timeout_s: float = 5.0
    """Per attempt: for connecting, and for each wait on the server's answer."""
    retries: int = 2
    """Further attempts after a failed one (no answer, or HTTP 408, 425, 429, 500, 502, 503, 504); 0 = none."""
    backoff_s: float = 1.0
    """Wait before the first retry; it doubles with each further one (to at most ``BACKOFF_MAX_S``)."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Extra HTTP headers, e.g. ``Authorization`` (kept out of ``repr``, so out of logs)."""
    queue_size: int = 100
    """Detections waiting to be sent; when full, the oldest is dropped."""
    max_age_s: float = 60.0
    """A detection that waited longer than this is dropped rather than sent."""
    close_timeout_s: float = 5.0
    """On exit, time given to deliver what is queued; an attempt under way may add ``timeout_s``."""

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook url {self.url!r}: must be an http:// or https:// URL")
        for name in ("timeout_s", "queue_size", "max_age_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"webhook {name}={getattr(self, name)}: must be positive")
        for name in ("retries", "backoff_s", "close_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"webhook {name}={getattr(self, name)}: must not be negative")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name) or not isinstance(value, str) or "\r" in value or "\n" in value:
                raise ConfigError(f"webhook header {name!r}: needs a plain header name and a one-line string value")

    @property
    def where(self) -> str:
        """``scheme://host:port`` of ``url``, for log lines (no credentials, path or query)."""
        parts = urllib.parse.urlsplit(self.url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect of a POST as a GET without the body: report it instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookAction:
    """POSTs each detection from a worker thread (see the module docstring); ``handle`` only enqueues."""

    accepts = Detection

    def __init__(self, settings: WebhookSettings):
        self.settings = settings
        self._headers = {"Content-Type": "application/json", "User-Agent": f"kws/{__version__}",
                         **settings.headers}
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._drops = DropReport(f"webhook {settings.where}", _LOGGER)
        self._condition = threading.Condition()
        self._pending: collections.deque = collections.deque()
        """(monotonic time queued, keyword, body) per detection."""
        self._busy = False
        self._stopping = False
        self._abort = threading.Event()
        """Set when closing gives up: no further attempts."""
        self._thread = threading.Thread(target=self._loop, name="kws-webhook", daemon=True)
        self._thread.start()
        _LOGGER.info("posting detections to webhook %s", settings.where)

    def handle(self, detection: Detection) -> None:
        body = json.dumps(detection.to_dict()).encode()
        with self._condition:
            full = len(self._pending) >= self.settings.queue_size
            if full:
                self._pending.popleft()
            self._pending.append((time.monotonic(), detection.keyword, body))
            self._condition.notify_all()
        if full:
            self._drops.add(f"oldest in a full queue (queue_size = {self.settings.queue_size}; "
                            "server slow or unreachable)")

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending:
                    return
                queued_at, keyword, body = self._pending.popleft()
                self._busy = True
            try:
                if time.monotonic() - queued_at > self.settings.max_age_s:
                    self._drops.add(f"older than max_age_s = {self.settings.max_age_s:g} s")
                else:
                    self._deliver(keyword, body)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _deliver(self, keyword: str, body: bytes) -> bool:
        s = self.settings
        problem = ""
        attempts = 0
        for attempt in range(1 + s.retries):
            if attempt and self._abort.wait(min(s.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)):
                break
            attempts += 1
            try:
                self._post(body)
            except urllib.error.HTTPError as error:
                error.close()
                problem = f"HTTP {error.code} {error.reason}"
                if error.code in RETRY_STATUSES:
                    continue
                hint = ""
                if 300 <= error.code < 400:
                    hint = f" (redirect to {error.headers.get('Location')}: set webhook.url to it)"
                _LOGGER.error("webhook %s answered %s for '%s'%s; not retried", s.where, problem, keyword, hint)
                return False
            except (OSError, http.client.HTTPException) as error:
                problem = self._describe(error)
                continue
            if attempts > 1:
                _LOGGER.info("webhook %s took '%s' at attempt %d", s.where, keyword, attempts)
            return True
        _LOGGER.error("webhook %s failed %d time(s) for '%s' (last: %s); the detection is dropped", s.where,
                      attempts, keyword, problem)
        return False

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.settings.url, data=body, headers=self._headers, method="POST")
        with self._opener.open(request, timeout=self.settings.timeout_s) as response:
            response.read(RESPONSE_BYTES)

    def _describe(self, error: BaseException) -> str:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"no answer within timeout_s = {self.settings.timeout_s:g} s"
        if isinstance(reason, OSError) and reason.strerror:
            return reason.strerror
        return str(reason) or type(reason).__name__

    def close(self) -> None:
        deadline = time.monotonic() + self.settings.close_timeout_s
        with self._condition:
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._condition.wait(max(0.0, deadline - time.monotonic()))
            unsent = len(self._pending)
            self._pending.clear()
            self._stopping = True
            self._condition.notify_all()
        self._abort.set()
        self._thread.join(self.settings.timeout_s + 1.0)
        if unsent:
            self._drops.add("not sent before exit", unsent)
        self._drops.flush()
