"""kws.sdnotify against real AF_UNIX datagram sockets, as systemd's NOTIFY_SOCKET is."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from kws.sdnotify import Notifier, notify


@pytest.fixture
def listener(tmp_path):
    """A datagram socket bound in tmp_path, like the one systemd passes as $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_listener():
    name = f"kws-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def receive(sock) -> str:
    return sock.recv(4096).decode()


def nothing_waiting(sock) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_messages_reach_a_path_socket(listener):
    sock, path = listener
    with Notifier.from_environment({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receive(sock) == "READY=1"
        assert notifier.ready(status="listening on USB mic")
        assert receive(sock) == "READY=1\nSTATUS=listening on USB mic"
        assert notifier.status("2 detections")
        assert receive(sock) == "STATUS=2 detections"
        assert notifier.stopping()
        assert receive(sock) == "STOPPING=1"
        assert notifier.extend_timeout(2.5)
        assert receive(sock) == "EXTEND_TIMEOUT_USEC=2500000"


def test_messages_reach_an_abstract_socket(abstract_listener):
    sock, name = abstract_listener
    assert notify("READY=1", {"NOTIFY_SOCKET": name})
    assert receive(sock) == "READY=1"


def test_reloading_carries_the_monotonic_clock(listener):
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(path).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive(sock).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_status_cannot_inject_other_assignments(listener):
    sock, path = listener
    Notifier(path).status("bad\nREADY=1")
    assert receive(sock) == "STATUS=bad READY=1"


def test_watchdog_interval_is_half_of_watchdog_usec(listener):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(env).watchdog_interval_s == 15.0
    assert Notifier.from_environment(dict(env, WATCHDOG_PID=str(os.getpid()))).watchdog_interval_s == 15.0
    # the watchdog of another process (WATCHDOG_PID), none, or nonsense: no watchdog
    assert Notifier.from_environment(dict(env, WATCHDOG_PID=str(os.getpid() + 1))).watchdog_interval_s is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": path}).watchdog_interval_s is None
    assert Notifier.from_environment(dict(env, WATCHDOG_USEC="0")).watchdog_interval_s is None
    assert Notifier.from_environment(dict(env, WATCHDOG_USEC="soon")).watchdog_interval_s is None
    # without a socket there is nobody to ping
    assert Notifier.from_environment({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s is None


def test_watchdog_pings_at_most_once_per_interval(listener):
    sock, path = listener
    notifier = Notifier(path, watchdog_timeout_s=0.4)
    assert notifier.watchdog_interval_s == pytest.approx(0.2)
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert not any(notifier.watchdog() for _ in range(1000))  # the audio loop calls it per chunk
    assert nothing_waiting(sock)
    time.sleep(0.25)
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert notifier.watchdog(force=True)
    assert receive(sock) == "WATCHDOG=1"


def test_without_watchdog_usec_watchdog_sends_nothing(listener):
    sock, path = listener
    assert not Notifier(path).watchdog()
    assert nothing_waiting(sock)


def test_without_notify_socket_everything_is_a_no_op(caplog):
    caplog.set_level(logging.DEBUG, "kws.sdnotify")
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.stopping() and not notifier.watchdog(force=True)
    assert notifier._socket is None
    assert not notify("READY=1", {})
    assert caplog.records == []


def test_a_dead_socket_is_reported_once_and_never_raises(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, "kws.sdnotify")
    notifier = Notifier(str(tmp_path / "gone.sock"), watchdog_timeout_s=30)
    assert not notifier.ready()
    assert not notifier.watchdog(force=True)
    assert not notifier.status("x")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "gone.sock" in warnings[0].getMessage() and "No such file" in warnings[0].getMessage()


def test_an_unsupported_address_is_reported_once(caplog):
    caplog.set_level(logging.DEBUG, "kws.sdnotify")
    notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled and not notifier.ready()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "vsock:2:1234" in caplog.records[0].getMessage()


def test_a_full_socket_does_not_block_the_caller(listener, caplog):
    """Nobody reads (systemd hung): sends fail fast with EAGAIN instead of stalling the audio loop."""
    caplog.set_level(logging.DEBUG, "kws.sdnotify")
    sock, path = listener
    notifier = Notifier(path, watchdog_timeout_s=30)
    started = time.monotonic()
    results = [notifier.watchdog(force=True) for _ in range(5000)]
    assert time.monotonic() - started < 5
    assert results[0] and not results[-1]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert "Resource temporarily unavailable" in caplog.text
    assert receive(sock) == "WATCHDOG=1"  # what got through is intact
