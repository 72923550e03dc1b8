"""A real MQTT broker for tests: Mosquitto on a free port of 127.0.0.1, and a paho subscriber.

``Mosquitto`` is a child process with a generated config (optionally with a password
file, TLS, persistence), that can be stopped and started again on the same port.
``Subscriber`` collects every message of its topics, reconnecting if the broker goes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_missing() -> str | None:
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        return "mosquitto not found: apt-get install mosquitto"
    return None


def require_mosquitto() -> None:
    """Skip without Mosquitto, except on CI (CI=true), which installs it: there it fails."""
    reason = mosquitto_missing()
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``mosquitto -c DIR/mosquitto.conf`` listening on 127.0.0.1:``port``.

    ``users`` (name -> password) turns anonymous access off; ``tls`` = (ca, cert, key)
    paths makes the listener TLS-only and requires a client certificate signed by ca;
    ``persistence`` keeps retained messages and persistent sessions across a restart.
    """

    def __init__(self, directory: Path, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, persistence: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to the user "mosquitto", who cannot read our files
        if users:
            passwords = self.directory / "passwords"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run([MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(passwords), name, password],
                               check=True, capture_output=True)
            lines.append(f"password_file {passwords}")
        if tls:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "require_certificate true"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/"]
        self.config = self.directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mosquitto did not listen on {self.port}:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (it saves its persistent state), then wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Subscriber:
    """A paho client subscribed to ``topics``; ``messages`` is every (topic, text, retained) received."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), *, client_id: str = "",
                 persistent: bool = False, auth: tuple[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        import paho.mqtt.client as mqtt

        self.topics = topics
        self.messages: list[tuple[str, str, bool]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            pytest.fail(f"test subscriber could not subscribe to {topics} on port {port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list], object], timeout: float, what: str):
        """Waits until ``predicate(messages)`` is true; returns its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} within {timeout} s; received: {self.messages[-20:]}")
                self._changed.wait(0.1)

    def payloads(self, topic: str) -> list[str]:
        with self._changed:
            return [text for t, text, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(text) for text in self.payloads(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
