"""Webhook action against a real HTTP server (``http.server.ThreadingHTTPServer`` on a free port); no mocks.

The JSON arrives with the configured headers; a server slower than ``timeout_s`` is
retried, then given up, and never holds up the other actions; 500 then 200 is
retried; 404 is not; a full queue drops the oldest; ``kws listen`` with a ``[webhook]``
table posts every detection of a real recording; and the config file's table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import soundfile as sf

from conftest import DEFAULT_MODEL, SAMPLE_RATE_HZ, keyword_stream, run_kws

from kws.actions import Dispatcher
from kws.config import load_config
from kws.detector import Detection
from kws.errors import ConfigError
from kws.webhook import WebhookAction, WebhookSettings


class Server:
    """An HTTP server on 127.0.0.1 that records each POST and answers as ``respond`` says.

    ``respond(n)`` gives (status, delay_s) for the n-th request (from 0). A delayed answer
    waits on an event that ``stop`` sets, so no handler outlives the test.
    """

    def __init__(self, respond=lambda n: (200, 0.0)):
        self.requests: list[dict] = []
        self.respond = respond
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._changed:
                    n = len(server.requests)
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                            "at": time.monotonic()})
                    server._changed.notify_all()
                status, delay_s = server.respond(n)
                if delay_s and server._stopping.wait(delay_s):
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/webhook/secret-id"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                if time.monotonic() > deadline:
                    pytest.fail(f"{len(self.requests)} request(s) within {timeout} s, expected {count}")
                self._changed.wait(0.1)
            return list(self.requests)

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def make(respond=lambda n: (200, 0.0)):
        servers.append(Server(respond))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def detection(keyword: str = "yes", offset_s: float = 12.34) -> Detection:
    return Detection(keyword, 0.9312, offset_s, "kws12")


class Recorder:
    """Another action: when did each detection reach it?"""

    def __init__(self):
        self.seen: list[tuple[str, float]] = []

    def handle(self, d):
        self.seen.append((d.keyword, time.monotonic()))

    def close(self):
        pass


def test_detection_json_arrives_with_headers(server, caplog):
    s = server()
    action = WebhookAction(WebhookSettings(url=s.url, headers={"Authorization": "Bearer t0ken", "X-Room": "den"}))
    d = detection()
    with caplog.at_level(logging.INFO, logger="kws"):
        action.handle(d)
        got = s.wait_for(1, 15)[0]
        action.close()
    assert got["path"] == "/api/webhook/secret-id"
    assert json.loads(got["body"]) == d.to_dict()
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["headers"]["Authorization"] == "Bearer t0ken" and got["headers"]["X-Room"] == "den"
    assert got["headers"]["User-Agent"].startswith("kws/")
    assert not any("secret-id" in r.getMessage() for r in caplog.records)  # the webhook id is a secret
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_slow_server_is_retried_then_given_up_without_holding_up_detection(server, caplog):
    s = server(lambda n: (200, 30.0))  # never answers in time
    recorder = Recorder()
    action = WebhookAction(WebhookSettings(url=s.url, timeout_s=0.5, retries=2, backoff_s=0.2))
    dispatcher = Dispatcher([action, recorder])
    with caplog.at_level(logging.INFO, logger="kws"):
        start = time.monotonic()
        dispatcher.submit(detection("yes"))
        dispatcher.submit(detection("no"))
        s.wait_for(1, 15)
        # the webhook is stuck on its first attempt (for 0.5 s, and 2.1 s with the retries), while
        # the other action got both at once
        deadline = time.monotonic() + 10
        while len(recorder.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [k for k, _ in recorder.seen] == ["yes", "no"]
        assert all(at - start < 2.0 for _, at in recorder.seen), recorder.seen
        requests = s.wait_for(6, 60)  # 3 attempts each
        dispatcher.close()
    assert len(requests) == 6
    assert [json.loads(r["body"])["keyword"] for r in requests] == ["yes"] * 3 + ["no"] * 3
    # the waits between attempts: backoff_s, then twice that (after each timeout)
    gaps = [b["at"] - a["at"] for a, b in zip(requests[:3], requests[1:3])]
    assert gaps[0] >= 0.5 + 0.2 - 0.05 and gaps[1] >= 0.5 + 0.4 - 0.05, gaps
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors
    assert "failed 3 time(s) for 'yes' (last: no answer within timeout_s = 0.5 s)" in errors[0]
    assert "http://127.0.0.1:" in errors[0] and "secret-id" not in errors[0]


def test_server_error_then_success_is_retried(server, caplog):
    s = server(lambda n: (500, 0.0) if n == 0 else (200, 0.0))
    action = WebhookAction(WebhookSettings(url=s.url, retries=3, backoff_s=0.1))
    with caplog.at_level(logging.INFO, logger="kws"):
        action.handle(detection("go"))
        requests = s.wait_for(2, 15)
        action.close()
    assert len(requests) == 2 and requests[0]["body"] == requests[1]["body"]
    assert json.loads(requests[1]["body"])["keyword"] == "go"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("took 'go' at attempt 2" in r.getMessage() for r in caplog.records)


def test_client_error_is_not_retried(server, caplog):
    s = server(lambda n: (404, 0.0))
    action = WebhookAction(WebhookSettings(url=s.url, retries=3, backoff_s=0.1))
    with caplog.at_level(logging.ERROR, logger="kws"):
        action.handle(detection("up"))
        s.wait_for(1, 15)
        action.close()
    assert len(s.requests) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"webhook {s.url.split('/api')[0]} answered HTTP 404 Not Found for 'up'; not retried"]


def test_unreachable_server_and_full_queue_drop_the_oldest(caplog):
    import socket

    with socket.socket() as s:  # a port where nobody listens
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    action = WebhookAction(WebhookSettings(url=url, retries=1, backoff_s=5.0, queue_size=3,
                                           close_timeout_s=0.5))
    with caplog.at_level(logging.WARNING, logger="kws"):
        start = time.monotonic()
        for i in range(50):
            action.handle(detection("yes", offset_s=i))
        assert time.monotonic() - start < 1.0
        action.close()
        closed_s = time.monotonic() - start
    assert closed_s < 10, closed_s
    messages = [r.getMessage() for r in caplog.records]
    errors = [m for m in messages if "failed" in m]
    assert errors and "Connection refused" in errors[0], messages
    drops = [m for m in messages if "dropped" in m]
    assert drops[-1].endswith("; 49 in all") or drops[-1].endswith("; 50 in all"), drops
    assert "oldest in a full queue (queue_size = 3; server slow or unreachable)" in drops[0]


def test_listen_posts_each_detection(server, tmp_path, shared_data):
    s = server()
    audio, events = keyword_stream()
    wav = tmp_path / "stream.wav"
    sf.write(str(wav), audio, SAMPLE_RATE_HZ, subtype="PCM_16")
    config = tmp_path / "kws.toml"
    config.write_text(f'model = "{DEFAULT_MODEL}"\n[webhook]\nurl = "{s.url}"\ntimeout_s = 2\n'
                      f'[webhook.headers]\nAuthorization = "Bearer t0ken"\n')
    result = run_kws("listen", "--config", str(config), "--input", str(wav), timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    printed = [json.loads(line) for line in result.stdout.decode().splitlines()]
    posted = [json.loads(r["body"]) for r in s.wait_for(len(events), 5)]
    assert [d["keyword"] for d in posted] == [word for word, _, _ in events]
    assert posted == printed
    assert all(r["headers"]["Authorization"] == "Bearer t0ken" for r in s.requests)


def test_webhook_config(tmp_path):
    path = tmp_path / "kws.toml"
    path.write_text('[webhook]\nurl = "https://ha.lan:8123/api/webhook/x"\ntimeout_s = 2\nretries = 0\n'
                    'queue_size = 5\n[webhook.headers]\nAuthorization = "Bearer t"\n')
    webhook = load_config(path).webhook
    assert webhook == WebhookSettings(url="https://ha.lan:8123/api/webhook/x", timeout_s=2.0, retries=0,
                                      queue_size=5, headers={"Authorization": "Bearer t"})
    assert webhook.where == "https://ha.lan:8123"
    assert load_config(path).mqtt is None


@pytest.mark.parametrize("body,message", [
    ("timeout_s = 1", r"\[webhook\] needs url"),
    ('url = "ftp://x/"', r"webhook url 'ftp://x/': must be an http:// or https:// URL"),
    ('url = "http://x/"\nretry = 1', r"\[webhook\]: unknown key\(s\) retry; allowed: .*retries"),
    ('url = "http://x/"\nretries = 1.5', r"webhook.retries must be a whole number"),
    ('url = "http://x/"\ntimeout_s = 0', r"webhook timeout_s=0.0: must be positive"),
    ('url = "http://x/"\nheaders = {X = 1}', r"webhook.headers must be a table of name = \"string\""),
    ('url = "http://x/"\nheaders = {"Bad Name" = "v"}', r"webhook header 'Bad Name': needs a plain header name"),
])
def test_bad_webhook_config_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[webhook]\n{body}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
