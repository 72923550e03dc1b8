"""MQTT: detections to a broker, and Home Assistant discovery so that each keyword is an ``event`` entity.

Topics (``P`` is ``topic_prefix``)::

    P/detection                  every detection: the JSON of Detection.to_dict()
    P/keyword/MODEL/KEYWORD      the same, plus "event_type": "detected" (the Home Assistant event's topic)
    P/status                     "online" (retained) while connected; "offline" on close, or as the last will
    homeassistant/event/NODE_ID/MODEL_KEYWORD/config    retained discovery config, one per keyword

A broker that is down, slow or refusing never holds up detection: ``handle`` only
appends to a bounded queue; a thread of our own hands its contents to paho-mqtt
while connected, and paho's network thread reconnects with backoff. When the
queue is full the oldest detection is dropped; detections older than
``max_age_s`` when the broker comes back are dropped too (a light switched on
minutes late is worse than not at all). Each kind of drop and each connection
problem is logged as one line, not once per detection or per retry.

paho-mqtt (the ``mqtt`` extra) is imported when an ``MqttAction`` is made, never at import.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from kws import __version__
from kws.actions import DropReport
from kws.detector import Detection
from kws.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

PAYLOAD_ONLINE = "online"
PAYLOAD_OFFLINE = "offline"
EVENT_TYPE = "detected"
"""The Home Assistant event type of a detection."""
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CLOSE_POLL_S = 0.05


def _check_topic(name: str, topic: str) -> None:
    if not topic or any(c in topic for c in "+#\0") or topic.startswith("/") or topic.endswith("/"):
        raise ConfigError(f"mqtt {name} {topic!r}: must be a non-empty MQTT topic without +, # "
                          f"or a leading or trailing /")


def topic_part(name: str) -> str:
    """A model or keyword name as one topic level / discovery id: characters other than A-Z a-z 0-9 _ - become _."""
    return _TOPIC_UNSAFE.sub("_", name) or "_"


@dataclass(frozen=True)
class MqttSettings:
    """The broker, the topics and the limits of the MQTT action (``[mqtt]`` in the config file)."""

    host: str
    """Broker host name or address."""
    port: int = 1883
    """Broker port (8883 is the usual one for TLS)."""
    topic_prefix: str = "kws"
    """First level(s) of every topic kws publishes (see the module docstring); one per kws device."""
    node_id: str = "kws"
    """This device in Home Assistant: discovery topics, unique ids and the device entry (A-Z a-z 0-9 _ -)."""
    device_name: str = "kws"
    """The Home Assistant device's name."""
    client_id: str = ""
    """MQTT client id; empty = ``kws-<node_id>``. Two clients with one id push each other off the broker."""
    username: str | None = None
    """User name at the broker."""
    password: str | None = field(default=None, repr=False)
    """Password of ``username`` (kept out of ``repr``, so out of logs)."""
    tls: bool = False
    """Connect with TLS (implied by ``ca_file`` or ``cert_file``)."""
    ca_file: Path | None = None
    """CA certificate(s) to trust for the broker's certificate; None = the system's CAs."""
    cert_file: Path | None = None
    """Client certificate (PEM), for brokers that require one."""
    key_file: Path | None = None
    """Private key of ``cert_file``, unless that file holds it too."""
    tls_insecure: bool = False
    """Do not check that the broker's certificate names ``host`` (the CA is still checked)."""
    discovery: bool = True
    """Publish Home Assistant discovery configs (retained), so each keyword shows up as an event entity."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix."""
    qos: int = 1
    """QoS of detections (0, 1 or 2). Status and discovery messages are always QoS 1 and retained."""
    keepalive_s: int = 60
    """MQTT keep-alive; the broker declares kws gone (and sends the last will) after 1.5 times this of silence."""
    connect_timeout_s: float = 5.0
    """A connection attempt that has not succeeded after this is abandoned (and retried)."""
    reconnect_max_s: int = 60
    """Reconnection attempts back off from 1 s, doubling up to this."""
    queue_size: int = 100
    """Detections held while the broker is away; when full, the oldest is dropped."""
    max_age_s: float = 60.0
    """A held detection older than this when the broker is back is dropped instead of published."""
    close_timeout_s: float = 3.0
    """On exit, time given to send what is queued and "offline" before disconnecting anyway."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("mqtt host must be a host name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt port={self.port}: must be 1 to 65535")
        _check_topic("topic_prefix", self.topic_prefix)
        _check_topic("discovery_prefix", self.discovery_prefix)
        if not _NODE_ID.match(self.node_id):
            raise ConfigError(f"mqtt node_id {self.node_id!r}: use only letters, digits, _ and -")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"mqtt qos={self.qos}: must be 0, 1 or 2")
        for name in ("keepalive_s", "connect_timeout_s", "reconnect_max_s", "queue_size", "max_age_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"mqtt {name}={getattr(self, name)}: must be positive")
        if self.close_timeout_s < 0:
            raise ConfigError(f"mqtt close_timeout_s={self.close_timeout_s}: must not be negative")
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt password is set but username is not: set both")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("mqtt key_file is set but cert_file is not: the key belongs to a client certificate")
        if self.tls_insecure and not self.uses_tls:
            raise ConfigError("mqtt tls_insecure is set but TLS is not: set tls = true (or ca_file)")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def client_name(self) -> str:
        return self.client_id or f"kws-{self.node_id}"

    @property
    def broker(self) -> str:
        """``host:port``, for log lines."""
        return f"{self.host}:{self.port}"

    @property
    def detection_topic(self) -> str:
        return f"{self.topic_prefix}/detection"

    @property
    def availability_topic(self) -> str:
        return f"{self.topic_prefix}/status"

    def keyword_topic(self, model: str, keyword: str) -> str:
        return f"{self.topic_prefix}/keyword/{topic_part(model)}/{topic_part(keyword)}"

    def discovery_topic(self, model: str, keyword: str) -> str:
        return f"{self.discovery_prefix}/event/{self.node_id}/{topic_part(model)}_{topic_part(keyword)}/config"


def discovery_configs(settings: MqttSettings, keywords: Mapping[str, Sequence[str]]) -> list[tuple[str, dict]]:
    """``(topic, config)`` of the Home Assistant event entity of each keyword of each model."""
    device = {"identifiers": [f"kws_{settings.node_id}"], "name": settings.device_name, "manufacturer": "kws",
              "model": "keyword spotter", "sw_version": __version__}
    configs = []
    for model, words in keywords.items():
        for keyword in words:
            object_id = f"{topic_part(model)}_{topic_part(keyword)}"
            configs.append((settings.discovery_topic(model, keyword), {
                "name": keyword if len(keywords) == 1 else f"{keyword} ({model})",
                "unique_id": f"kws_{settings.node_id}_{object_id}",
                "state_topic": settings.keyword_topic(model, keyword),
                "event_types": [EVENT_TYPE],
                "availability_topic": settings.availability_topic,
                "payload_available": PAYLOAD_ONLINE,
                "payload_not_available": PAYLOAD_OFFLINE,
                "qos": settings.qos,
                "icon": "mdi:account-voice",
                "device": device,
                "origin": {"name": "kws", "sw_version": __version__},
            }))
    return configs


def _paho():
    """The paho-mqtt client module, or a ConfigError that says what to install."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ConfigError("MQTT needs paho-mqtt: pip install 'kws[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise ConfigError("MQTT needs paho-mqtt 2.0 or newer: pip install --upgrade 'kws[mqtt]'")
    return mqtt


class MqttAction:
    """Publishes each detection (see the module docstring); ``handle`` never waits for the network.

    ``keywords`` maps each model that runs to the keywords it may fire: each gets a
    Home Assistant event entity if ``settings.discovery``. The connection is made in
    the background; ``close`` sends "offline" and disconnects within about
    ``close_timeout_s`` (plus ``connect_timeout_s`` if a connection attempt is under way).
    """

    accepts = Detection

    def __init__(self, settings: MqttSettings, keywords: Mapping[str, Sequence[str]]):
        mqtt = _paho()
        self._mqtt = mqtt
        self.settings = settings
        self.keywords = {model: tuple(words) for model, words in keywords.items()}
        self._discovery = discovery_configs(settings, self.keywords) if settings.discovery else []
        self._drops = DropReport(f"MQTT (broker {settings.broker})", _LOGGER)
        self._condition = threading.Condition()
        self._pending: collections.deque = collections.deque()
        """(monotonic time queued, ((topic, payload), ...)) per detection."""
        self._connected = False
        self._closing = False
        self._stopping = False
        self._problem: str | None = None
        """The connection problem logged last: each is logged once, not on every retry."""
        self._ever_connected = False
        self._online = None
        """paho's MQTTMessageInfo of the "online" status sent on (re)connecting."""

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_name,
                             protocol=mqtt.MQTTv311)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.uses_tls:
            self._set_tls(client)
        client.will_set(settings.availability_topic, PAYLOAD_OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=settings.reconnect_max_s)
        # paho's own queue of unacknowledged messages: two per detection, plus status and discovery.
        client.max_queued_messages_set(2 * settings.queue_size + len(self._discovery) + 2)
        client.connect_timeout = settings.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        self._publisher = threading.Thread(target=self._publish_loop, name="kws-mqtt", daemon=True)
        _LOGGER.info("publishing detections to MQTT broker %s, topic %s%s", settings.broker,
                     settings.detection_topic,
                     f"; {len(self._discovery)} keyword(s) announced to Home Assistant" if self._discovery else "")
        self._publisher.start()
        client.loop_start()

    def _set_tls(self, client) -> None:
        import ssl

        s = self.settings
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(s, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"mqtt {name} {path}: file not found")
        try:
            client.tls_set(ca_certs=None if s.ca_file is None else str(s.ca_file),
                           certfile=None if s.cert_file is None else str(s.cert_file),
                           keyfile=None if s.key_file is None else str(s.key_file),
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(f"mqtt TLS files (ca_file, cert_file, key_file) cannot be used: {error}") from None
        if s.tls_insecure:
            client.tls_insecure_set(True)

    # ------------------------------------------------------------------ the dispatcher's side

    def handle(self, detection: Detection) -> None:
        record = detection.to_dict()
        messages = ((self.settings.detection_topic, json.dumps(record)),
                    (self.settings.keyword_topic(detection.model, detection.keyword),
                     json.dumps({"event_type": EVENT_TYPE, **record})))
        with self._condition:
            full = len(self._pending) >= self.settings.queue_size
            if full:
                self._pending.popleft()
            self._pending.append((time.monotonic(), messages))
            self._condition.notify_all()
        if full:
            self._drops.add(f"oldest in a full queue (queue_size = {self.settings.queue_size}; "
                            "broker unreachable or slow)")

    # ------------------------------------------------------------------ our publishing thread

    def _publish_loop(self) -> None:
        mqtt = self._mqtt
        while True:
            with self._condition:
                while not self._stopping and not (self._connected and self._pending):
                    self._condition.wait()
                if self._stopping:
                    return
                queued_at, messages = self._pending.popleft()
                online = self._online
                self._condition.notify_all()
            if online is not None and not online.is_published():
                # After a reconnection paho first sends again what the broker had not acknowledged; once
                # the "online" sent before that is acknowledged, those are out too, and order is kept.
                try:
                    online.wait_for_publish(self.settings.connect_timeout_s)
                except (ValueError, RuntimeError):  # the connection went again: paho keeps QoS > 0
                    pass
                if self._stopping:  # closed meanwhile, and gone on without us
                    self._drops.add("not sent before exit")
                    return
            if time.monotonic() - queued_at > self.settings.max_age_s:
                self._drops.add(f"older than max_age_s = {self.settings.max_age_s:g} s when the broker was back")
                continue
            for i, (topic, payload) in enumerate(messages):
                info = self._client.publish(topic, payload, qos=self.settings.qos)
                if info.rc == mqtt.MQTT_ERR_NO_CONN and self.settings.qos == 0:
                    # Lost the connection just now; QoS 0 is not kept by paho: ours again, to retry.
                    with self._condition:
                        self._pending.appendleft((queued_at, messages[i:]))
                    break
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                    self._drops.add("not acknowledged by the broker")
                    break

    # ------------------------------------------------------------------ paho's network thread

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report_problem(f"MQTT broker {self.settings.broker} refused the connection: {reason_code}"
                                 + (" (check mqtt username and password)" if reason_code.value in (4, 5, 134, 135)
                                    else ""))
            return
        if self._closing:
            client.disconnect()
            return
        online = client.publish(self.settings.availability_topic, PAYLOAD_ONLINE, qos=1, retain=True)
        for topic, config in self._discovery:
            client.publish(topic, json.dumps(config), qos=1, retain=True)
        with self._condition:
            self._online = online
            self._connected = True
            self._condition.notify_all()
        if self._problem is not None or not self._ever_connected:
            _LOGGER.info("%s MQTT broker %s", "reconnected to" if self._ever_connected else "connected to",
                         self.settings.broker)
        self._problem = None
        self._ever_connected = True

    def _on_connect_fail(self, client, userdata) -> None:
        error = sys.exc_info()[1]  # paho calls this while handling the connection's OSError
        detail = f": {error}" if error is not None else ""
        self._report_problem(f"cannot connect to MQTT broker {self.settings.broker}{detail}; retrying "
                             f"(every {self.settings.reconnect_max_s} s at most)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._condition:
            was_connected, self._connected = self._connected, False
        if was_connected and not self._closing:
            why = f" ({reason_code})" if reason_code.value not in (0, 128) else ""  # 128: "Unspecified error"
            self._report_problem(f"lost the connection to MQTT broker {self.settings.broker}{why}; "
                                 f"reconnecting, detections are queued meanwhile")

    def _report_problem(self, text: str) -> None:
        if text != self._problem:
            _LOGGER.warning("%s", text)
        self._problem = text

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        deadline = time.monotonic() + self.settings.close_timeout_s
        with self._condition:
            self._closing = True
            while self._pending and self._connected and time.monotonic() < deadline:
                self._condition.wait(_CLOSE_POLL_S)
            self._stopping = True
            unsent = len(self._pending)
            connected = self._connected
            self._condition.notify_all()
        self._publisher.join(max(0.5, deadline - time.monotonic()))
        if unsent:
            self._drops.add("not sent before exit", unsent)
        self._drops.flush()
        confirmed = True
        if connected:
            info = self._client.publish(self.settings.availability_topic, PAYLOAD_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(1.0, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as error:  # not queued, or the connection went meanwhile
                _LOGGER.debug("MQTT offline status not sent: %s", error)
            confirmed = info.is_published()
        if confirmed:
            self._client.disconnect()
        else:  # no clean DISCONNECT, which would cancel the last will: the broker sends it when we are gone
            _LOGGER.warning("MQTT broker %s did not confirm the \"offline\" status in time; its last will "
                            "says so once the connection is gone", self.settings.broker)
        # loop_stop joins paho's thread, which may be in a connection attempt: wait for it, boundedly.
        stopper = threading.Thread(target=self._client.loop_stop, name="kws-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic()) + self.settings.connect_timeout_s)
        if stopper.is_alive():
            _LOGGER.debug("MQTT network thread still busy after close; left to end with the process")
