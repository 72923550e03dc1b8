"""MQTT action against a real Mosquitto broker, checked by a real paho subscriber; no mocks.

Detections, Home Assistant discovery and availability; user name and password; TLS
with a client certificate; the last will when kws is killed; a broker outage in the
middle of ``kws listen`` (detections go on reaching stdout and hooks, and are
published again once it is back); a broker that accepts connections but never
answers; and the config file's ``[mqtt]`` table.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, ROOT, SAMPLE_RATE_HZ, keyword_stream
from mosquitto import Mosquitto, Subscriber, free_port, require_mosquitto
from virtual_audio import to_int16

from kws.config import load_config
from kws.detector import Detection
from kws.errors import ConfigError
from kws.mqtt import EVENT_TYPE, MqttAction, MqttSettings

PY = sys.executable
KWS12_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@pytest.fixture
def broker(tmp_path):
    require_mosquitto()
    daemon = Mosquitto(tmp_path / "broker", persistence=True)
    yield daemon
    daemon.stop()


def settings(port: int, **options) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, reconnect_max_s=1, **options)


def detection(keyword: str = "yes", model: str = "kws12", offset_s: float = 12.34) -> Detection:
    return Detection(keyword, 0.9312, offset_s, model)


def status(subscriber: Subscriber, prefix: str = "kws") -> list[str]:
    return subscriber.payloads(f"{prefix}/status")


# --------------------------------------------------------------------------- in-process


def test_detections_discovery_and_availability(broker):
    live = Subscriber(broker.port, ("kws/#",))
    keywords = {"kws12": ("yes", "no"), "mine": ("hey kws",)}
    action = MqttAction(settings(broker.port, node_id="den"), keywords)
    live.wait_for(lambda m: status(live) == ["online"], 15, "online status")

    d = detection("yes")
    action.handle(d)
    live.wait_for(lambda m: live.payloads("kws/keyword/kws12/yes"), 15, "the detection on its keyword topic")
    assert live.json("kws/detection") == [d.to_dict()]
    assert live.json("kws/keyword/kws12/yes") == [{"event_type": EVENT_TYPE, **d.to_dict()}]

    # Discovery: retained, so a client that subscribes later (Home Assistant restarting) gets them.
    late = Subscriber(broker.port, ("homeassistant/#",))
    expected = {"homeassistant/event/den/kws12_yes/config", "homeassistant/event/den/kws12_no/config",
                "homeassistant/event/den/mine_hey_kws/config"}
    late.wait_for(lambda m: {t for t, _, _ in m} >= expected, 15, "discovery configs")
    assert {t for t, _, _ in late.messages} == expected
    assert all(retained for _, _, retained in late.messages)
    configs = {t: json.loads(text) for t, text, _ in late.messages}
    yes = configs["homeassistant/event/den/kws12_yes/config"]
    assert yes["state_topic"] == "kws/keyword/kws12/yes"  # where the event above went
    assert yes["event_types"] == [EVENT_TYPE]
    assert yes["availability_topic"] == "kws/status"
    assert (yes["payload_available"], yes["payload_not_available"]) == ("online", "offline")
    assert yes["name"] == "yes (kws12)"
    assert configs["homeassistant/event/den/mine_hey_kws/config"]["state_topic"] == "kws/keyword/mine/hey_kws"
    assert len({c["unique_id"] for c in configs.values()}) == 3
    assert all(c["device"]["identifiers"] == ["kws_den"] for c in configs.values())
    late.close()

    start = time.monotonic()
    action.close()
    assert time.monotonic() - start < 10
    live.wait_for(lambda m: status(live)[-1:] == ["offline"], 15, "offline status after close")
    assert status(live) == ["online", "offline"]
    after = Subscriber(broker.port, ("kws/status",))
    after.wait_for(lambda m: m, 15, "retained status")
    assert after.messages == [("kws/status", "offline", True)]
    after.close()
    live.close()


def test_discovery_off_and_own_prefixes(broker):
    live = Subscriber(broker.port, ("#",))
    action = MqttAction(settings(broker.port, topic_prefix="house/kitchen", discovery=False, qos=0),
                        {"kws12": ("stop",)})
    live.wait_for(lambda m: status(live, "house/kitchen") == ["online"], 15, "online status")
    action.handle(detection("stop"))
    live.wait_for(lambda m: live.payloads("house/kitchen/keyword/kws12/stop"), 15, "detection")
    action.close()
    live.wait_for(lambda m: status(live, "house/kitchen")[-1:] == ["offline"], 15, "offline")
    assert not [t for t, _, _ in live.messages if t.startswith("homeassistant/")]
    assert live.json("house/kitchen/detection")[0]["keyword"] == "stop"
    live.close()


def test_username_and_password(tmp_path, caplog):
    require_mosquitto()
    broker = Mosquitto(tmp_path / "broker", users={"kws": "s3cret", "watcher": "w4tch"})
    try:
        live = Subscriber(broker.port, ("kws/#",), auth=("watcher", "w4tch"))
        good = MqttAction(settings(broker.port, username="kws", password="s3cret"), {"kws12": ("go",)})
        live.wait_for(lambda m: "online" in status(live), 15, "online status of the client with credentials")
        good.handle(detection("go"))
        live.wait_for(lambda m: live.payloads("kws/detection"), 15, "detection")
        good.close()

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kws"):
            bad = MqttAction(settings(broker.port, username="kws", password="wrong", client_id="bad"),
                             {"kws12": ("go",)})
            start = time.monotonic()
            bad.handle(detection("no"))
            assert time.monotonic() - start < 0.5
            time.sleep(4)  # several attempts, 1 s apart
            start = time.monotonic()
            bad.close()
            assert time.monotonic() - start < 10
        refused = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(refused) == 1, refused  # once, not once per attempt
        assert "check mqtt username and password" in refused[0] and "127.0.0.1" in refused[0]
        assert [d["keyword"] for d in live.json("kws/detection")] == ["go"]
        assert not [r for r in caplog.records if "connected to MQTT" in r.getMessage()]
        live.close()
    finally:
        broker.stop()


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 / localhost, and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kws test CA",
            cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, ext in (("server", "/CN=localhost", ["-extfile", "server.ext"]), ("client", "/CN=kws", [])):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *ext, cwd=d)
    return d


def test_tls_with_client_certificate(tmp_path, certificates, caplog):
    require_mosquitto()
    c = certificates
    broker = Mosquitto(tmp_path / "broker", tls=(c / "ca.crt", c / "server.crt", c / "server.key"))
    try:
        live = Subscriber(broker.port, ("kws/#",), tls=(c / "ca.crt", c / "client.crt", c / "client.key"))
        action = MqttAction(settings(broker.port, ca_file=c / "ca.crt", cert_file=c / "client.crt",
                                     key_file=c / "client.key"), {"kws12": ("up",)})
        live.wait_for(lambda m: "online" in status(live), 15, "online status over TLS")
        action.handle(detection("up"))
        live.wait_for(lambda m: live.payloads("kws/detection"), 15, "detection over TLS")
        action.close()
        assert live.json("kws/detection")[0]["keyword"] == "up"

        # The system's CAs do not know ours: the handshake fails, is logged once, and nothing blocks.
        with caplog.at_level(logging.WARNING, logger="kws"):
            untrusted = MqttAction(settings(broker.port, tls=True, client_id="untrusted"), {"kws12": ("up",)})
            untrusted.handle(detection("down"))
            time.sleep(3)
            start = time.monotonic()
            untrusted.close()
            assert time.monotonic() - start < 10
        failures = [r.getMessage() for r in caplog.records if "cannot connect to MQTT broker" in r.getMessage()]
        assert len(failures) == 1 and "certificate verify failed" in failures[0], failures
        assert [d["keyword"] for d in live.json("kws/detection")] == ["up"]
        live.close()
    finally:
        broker.stop()


def test_missing_tls_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"mqtt ca_file .*nope\.crt: file not found"):
        MqttAction(settings(free_port(), ca_file=tmp_path / "nope.crt"), {"kws12": ("yes",)})


def test_unresponsive_broker_never_blocks(caplog):
    """A broker that accepts the connection and never answers: handle stays instant, the queue bounded."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
    accepted = []
    stop = threading.Event()

    def swallow():
        hole.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(hole.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="kws"):
            action = MqttAction(settings(hole.getsockname()[1], queue_size=5, close_timeout_s=1.0,
                                         connect_timeout_s=2.0), {"kws12": ("yes",)})
            start = time.monotonic()
            for i in range(500):
                action.handle(detection("yes", offset_s=i))
            handled_s = time.monotonic() - start
            time.sleep(0.5)
            start = time.monotonic()
            action.close()
            closed_s = time.monotonic() - start
        assert handled_s < 2.0, handled_s
        assert closed_s < 10, closed_s
        assert accepted, "the client never connected to the silent broker"
        drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        # the first drop at once, the rest summed up (and flushed on close): 495 by the queue, 5 at exit
        assert 2 <= len(drops) <= 4, drops
        assert drops[-1].endswith("; 500 in all"), drops
        assert "1 oldest in a full queue (queue_size = 5; broker unreachable or slow)" in drops[0], drops
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        hole.close()


def test_stale_detections_are_dropped_when_the_broker_is_back(broker, caplog):
    # A persistent session: whatever is published while it is away is kept for it, so a missing
    # message below was never published, not merely missed.
    watcher = Subscriber(broker.port, ("kws/detection",), client_id="watcher", persistent=True)
    watcher.close()
    broker.stop()
    with caplog.at_level(logging.INFO, logger="kws"):
        action = MqttAction(settings(broker.port, max_age_s=1.0), {"kws12": ("yes", "no")})
        action.handle(detection("yes", offset_s=1.0))
        action.handle(detection("no", offset_s=2.0))
        time.sleep(2.0)
        broker.start()
        watcher = Subscriber(broker.port, ("kws/detection",), client_id="watcher", persistent=True)
        action.handle(detection("no", offset_s=3.0))
        watcher.wait_for(lambda m: m, 20, "the fresh detection")
        time.sleep(1.0)
        action.close()
    assert [(d["keyword"], d["offset_s"]) for d in watcher.json("kws/detection")] == [("no", 3.0)]
    assert any("older than max_age_s = 1 s" in r.getMessage() and "2 in all" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    watcher.close()


# --------------------------------------------------------------------------- kws listen


class Listen:
    """``kws listen ARGS`` as a subprocess; stdout and stderr lines collected as they come."""

    def __init__(self, *args: str, stdin=subprocess.PIPE, python_prefix: tuple[str, ...] = ()):
        self.process = subprocess.Popen([PY, "-m", "kws.cli", "listen", *args], cwd=ROOT, stdin=stdin,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
                         for pipe, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, lines) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.decode().rstrip("\n"))
                self._changed.notify_all()

    def keywords(self) -> list[str]:
        with self._changed:
            return [json.loads(line)["keyword"] for line in self.stdout]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                if time.monotonic() > deadline:
                    pytest.fail(f"kws listen: no {what} within {timeout} s; stdout {self.stdout}; stderr:\n"
                                + "\n".join(self.stderr[-30:]))
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"kws listen exited with {self.process.returncode} before {what}:\n"
                                + "\n".join(self.stderr[-30:]))
                self._changed.wait(0.1)

    def feed(self, pcm: np.ndarray) -> None:
        self.process.stdin.write(pcm.astype("<i2").tobytes())
        self.process.stdin.flush()

    def finish(self, timeout: float = 60) -> int:
        self.process.stdin.close()
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def write_config(path: Path, mqtt: str, extra: str = "") -> Path:
    path.write_text(f'model = "{DEFAULT_MODEL}"\n{extra}\n[mqtt]\n{mqtt}\n')
    return path


def test_last_will_when_kws_is_killed(broker, tmp_path):
    config = write_config(tmp_path / "kws.toml", f'host = "127.0.0.1"\nport = {broker.port}\nnode_id = "hall"',
                          extra='keywords = ["yes", "stop"]')
    live = Subscriber(broker.port, ("kws/status", "homeassistant/#"))
    listener = Listen("--config", str(config), "--input", "-")
    try:
        live.wait_for(lambda m: status(live) == ["online"], 60, "online status of kws listen")
        expected = {"homeassistant/event/hall/kws12_yes/config", "homeassistant/event/hall/kws12_stop/config"}
        live.wait_for(lambda m: {t for t, _, _ in m if t.startswith("homeassistant/")} >= expected, 15,
                      "discovery of the configured keywords")
        listener.process.send_signal(signal.SIGKILL)  # no goodbye: the broker's last will must speak
        listener.process.wait(10)
        live.wait_for(lambda m: status(live) == ["online", "offline"], 15, "the last will")
    finally:
        listener.kill()
    # Only the keywords that may fire are announced.
    assert {t for t, _, _ in live.messages if t.startswith("homeassistant/")} == expected
    live.close()


def unique_keywords(detections: list[dict]) -> list[str]:
    """The keywords of ``detections`` without repeats of one detection: QoS 1 is "at least once"."""
    seen, words = set(), []
    for d in detections:
        if (d["offset_s"], d["time"]) not in seen:
            seen.add((d["offset_s"], d["time"]))
            words.append(d["keyword"])
    return words


def test_broker_outage_never_blocks_detection(broker, tmp_path, shared_data):
    """Broker stopped mid-stream: stdout and hooks go on at once; once it is back, detections are published again."""
    audio, events = keyword_stream(gap_s=2.5)
    pcm = to_int16(audio)
    # One piece per word: from just before it to just before the next, so each word fires within its piece.
    cuts = [0] + [int((start - 0.2) * SAMPLE_RATE_HZ) for _, start, _ in events[1:]] + [pcm.size]
    pieces = [pcm[a:b] for a, b in zip(cuts, cuts[1:])]
    words = [word for word, _, _ in events]
    assert words == ["yes", "stop", "off", "go"]
    hook_log = tmp_path / "hooks.txt"
    hook = [PY, "-c", f"import os; open({str(hook_log)!r}, 'a').write(os.environ['KWS_KEYWORD'] + '\\n')"]
    config = write_config(tmp_path / "kws.toml",
                          f'host = "127.0.0.1"\nport = {broker.port}\nreconnect_max_s = 1\nmax_age_s = 600',
                          extra=f'[hooks.commands]\n"*" = {json.dumps(hook)}')
    live = Subscriber(broker.port, ("kws/#",), client_id="outage-watcher", persistent=True)
    listener = Listen("--config", str(config), "--input", "-")
    hooked = lambda: hook_log.read_text().split() if hook_log.exists() else []  # noqa: E731
    published = lambda: unique_keywords(live.json("kws/detection"))  # noqa: E731
    try:
        live.wait_for(lambda m: "online" in status(live), 60, "online status of kws listen")
        for i in (0, 1):
            listener.feed(pieces[i])
            listener.wait_for(lambda: len(listener.keywords()) == i + 1, 30, f"detection of {words[i]}")
            live.wait_for(lambda m: len(published()) == i + 1, 15, f"{words[i]} published")
            listener.wait_for(lambda: len(hooked()) == i + 1, 15, f"hook for {words[i]}")  # (hooks run in parallel)

        broker.stop()
        fed = time.monotonic()
        listener.feed(pieces[2])
        listener.wait_for(lambda: len(listener.keywords()) == 3, 15, "detection during the outage")
        on_stdout_s = time.monotonic() - fed
        deadline = time.monotonic() + 15
        while hooked()[-1:] != ["off"] and time.monotonic() < deadline:
            time.sleep(0.05)
        hooked_s = time.monotonic() - fed
        assert hooked() == ["yes", "stop", "off"]
        assert on_stdout_s < 10 and hooked_s < 10, (on_stdout_s, hooked_s)
        listener.wait_for(lambda: any("cannot connect to MQTT broker" in line for line in listener.stderr), 15,
                          "a log line about the missing broker")
        time.sleep(2.5)  # a few more attempts, 1 s apart: they are not logged again
        assert published() == ["yes", "stop"]

        broker.start()
        # The watcher's persistent session survived the restart; what kws held back arrives now.
        live.wait_for(lambda m: len(published()) == 3, 30, "the detection held during the outage")
        listener.feed(pieces[3])
        listener.wait_for(lambda: len(listener.keywords()) == 4, 30, "detection after the outage")
        live.wait_for(lambda m: len(published()) == 4, 15, "publication after the outage")
        assert listener.finish() == 0, "\n".join(listener.stderr)
    finally:
        listener.kill()
    assert listener.keywords() == words
    assert published() == words
    assert hooked() == words
    events = [json.loads(text) for t, text, _ in live.messages if t.startswith("kws/keyword/")]
    assert unique_keywords(events) == words and {e["event_type"] for e in events} == {"detected"}
    live.wait_for(lambda m: status(live)[-1:] == ["offline"], 15, "offline status at exit")
    problems = [line for line in listener.stderr if "MQTT broker" in line and "WARNING" in line]
    assert len(problems) == 2, problems  # lost it, cannot reconnect: not a line per attempt
    assert "lost the connection" in problems[0] and "Connection refused" in problems[1], problems
    assert any("reconnected to MQTT broker" in line for line in listener.stderr)
    assert not any("Traceback" in line for line in listener.stderr), "\n".join(listener.stderr)
    live.close()


def test_mqtt_without_paho_is_one_line_error(tmp_path, shared_data):
    config = write_config(tmp_path / "kws.toml", 'host = "127.0.0.1"')
    hide_paho = "import sys; sys.modules['paho'] = None; from kws.cli import main; sys.exit(main())"
    result = subprocess.run([PY, "-c", hide_paho, "listen", "--config", str(config), "--input", "-"],
                            input=b"", capture_output=True, cwd=ROOT, timeout=120)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr.decode()
    assert lines == ["kws: error: MQTT needs paho-mqtt: pip install 'kws[mqtt]'"]
    assert result.stdout == b""


# --------------------------------------------------------------------------- config file


def test_mqtt_config(tmp_path):
    path = tmp_path / "kws.toml"
    path.write_text('''
[mqtt]
host = "broker.lan"
port = 8883
topic_prefix = "house/den"
node_id = "den"
username = "kws"
password = "s3cret"
ca_file = "certs/ca.crt"
qos = 0
keepalive_s = 30
queue_size = 10
max_age_s = 5.5
discovery_prefix = "ha"
''')
    mqtt = load_config(path).mqtt
    assert mqtt.host == "broker.lan" and mqtt.port == 8883 and mqtt.qos == 0 and mqtt.queue_size == 10
    assert mqtt.ca_file == tmp_path / "certs" / "ca.crt" and mqtt.uses_tls
    assert (mqtt.username, mqtt.password) == ("kws", "s3cret")
    assert mqtt.detection_topic == "house/den/detection" and mqtt.availability_topic == "house/den/status"
    assert mqtt.discovery_topic("kws12", "on") == "ha/event/den/kws12_on/config"
    assert mqtt.client_name == "kws-den" and mqtt.max_age_s == 5.5 and mqtt.keepalive_s == 30
    assert load_config(write_config(tmp_path / "min.toml", 'host = "b"')).mqtt == MqttSettings(host="b")
    path.write_text('model = "kws12"\n')
    assert load_config(path).mqtt is None


@pytest.mark.parametrize("body,message", [
    ("port = 1883", r"\[mqtt\] needs host"),
    ('host = "b"\nprot = 1', r"\[mqtt\]: unknown key\(s\) prot; allowed: .*port"),
    ('host = "b"\nport = "1883"', r"mqtt.port must be a whole number, not '1883'"),
    ('host = "b"\nport = 70000', r"mqtt port=70000: must be 1 to 65535"),
    ('host = "b"\nqos = 3', r"mqtt qos=3: must be 0, 1 or 2"),
    ('host = "b"\ntls = "yes"', r"mqtt.tls must be true or false"),
    ('host = "b"\ntopic_prefix = "kws/#"', r"mqtt topic_prefix 'kws/#': must be"),
    ('host = "b"\nnode_id = "my den"', r"mqtt node_id 'my den': use only"),
    ('host = "b"\npassword = "x"', r"password is set but username is not"),
    ('host = "b"\nkey_file = "k.pem"', r"key_file is set but cert_file is not"),
    ('host = "b"\ntls_insecure = true', r"tls_insecure is set but TLS is not"),
    ('host = "b"\nqueue_size = 0', r"mqtt queue_size=0: must be positive"),
    ('host = ""', r"mqtt.host must be a non-empty string"),
])
def test_bad_mqtt_config_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[mqtt]\n{body}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
