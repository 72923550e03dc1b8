"""Hook commands: environment, JSON on stdin, timeout, failure; under stress (floods, hangs, bursts); the config."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from kws.actions import Dispatcher, HookAction, HookSettings, JsonLinesAction
from kws.config import load_config
from kws.detector import Detection
from kws.errors import ConfigError

PY = sys.executable


def detection(keyword: str = "yes") -> Detection:
    return Detection(keyword, 0.9312, 12.34, "kws12")


def record_hook(out: Path) -> tuple[str, ...]:
    """A hook that writes its environment and stdin to ``out`` as JSON."""
    code = ("import json, os, sys; json.dump({'env': {k: v for k, v in os.environ.items() if k.startswith('KWS_')},"
            " 'stdin': sys.stdin.read(), 'argv': sys.argv[1:]}, open(sys.argv[1], 'w'))")
    return (PY, "-c", code, str(out))


def test_hook_gets_detection_in_environment_and_stdin(tmp_path):
    out = tmp_path / "hook.json"
    action = HookAction(HookSettings(commands={"yes": (record_hook(out),)}))
    action.handle(detection())
    action.close()
    got = json.loads(out.read_text())
    assert got["env"]["KWS_KEYWORD"] == "yes"
    assert got["env"]["KWS_SCORE"] == "0.9312"
    assert got["env"]["KWS_MODEL"] == "kws12"
    assert got["env"]["KWS_OFFSET_S"] == "12.340"
    assert got["env"]["KWS_TIME"].startswith(str(detection().time.year))
    payload = json.loads(got["stdin"])
    assert payload["keyword"] == "yes" and payload["score"] == 0.9312 and payload["model"] == "kws12"


def test_argv_is_not_passed_through_a_shell(tmp_path):
    out = tmp_path / "hook.json"
    argv = (*record_hook(out), "$(touch pwned)", "a b;c")
    action = HookAction(HookSettings(commands={"*": (argv,)}))
    action.handle(detection("stop"))
    action.close()
    assert json.loads(out.read_text())["argv"] == [str(out), "$(touch pwned)", "a b;c"]
    assert not (Path.cwd() / "pwned").exists()


def test_only_matching_hooks_run(tmp_path):
    yes, anything = tmp_path / "yes.json", tmp_path / "any.json"
    action = HookAction(HookSettings(commands={"yes": (record_hook(yes),), "*": (record_hook(anything),)}))
    action.handle(detection("stop"))
    action.close()
    assert not yes.exists()
    assert json.loads(anything.read_text())["env"]["KWS_KEYWORD"] == "stop"


def test_model_keyword_hooks_win_over_plain_ones():
    settings = HookSettings(commands={"on": (("plain",),), "kws12/on": (("mine",),), "*": (("any",),),
                                      "other/*": (("others",),)})
    assert settings.for_keyword("on") == [("plain",), ("any",)]
    assert settings.for_keyword("on", "kws12") == [("mine",), ("any",)]
    assert settings.for_keyword("on", "other") == [("plain",), ("others",)]
    assert settings.for_keyword("off", "kws12") == [("any",)]


def test_hanging_hook_is_killed_and_others_go_on(tmp_path, caplog):
    out = tmp_path / "after.json"
    hang = (PY, "-c", "import time; time.sleep(60)")
    action = HookAction(HookSettings(commands={"yes": (hang, record_hook(out))}, timeout_s=1.0, max_parallel=2))
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        action.handle(detection())
        action.close()
    assert time.monotonic() - start < 10
    assert out.exists()
    assert any("ran longer than 1.0 s and was killed" in r.getMessage() for r in caplog.records)


def test_failing_and_missing_hooks_are_logged_not_fatal(tmp_path, caplog):
    out = tmp_path / "ok.json"
    failing = (PY, "-c", "import sys; print('lights offline', file=sys.stderr); sys.exit(3)")
    missing = ("/nonexistent/hook",)
    action = HookAction(HookSettings(commands={"yes": (failing, missing, record_hook(out))}))
    with caplog.at_level(logging.ERROR):
        action.handle(detection())
        action.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed with exit status 3: lights offline" in m for m in messages)
    assert any("/nonexistent/hook for 'yes' could not start" in m for m in messages)
    assert out.exists()


def test_dispatcher_runs_actions_off_the_calling_thread(tmp_path):
    import io
    import threading

    seen = []

    class Recorder:
        def handle(self, d):
            seen.append((d.keyword, threading.current_thread().name))

        def close(self):
            pass

    stream = io.StringIO()
    dispatcher = Dispatcher([JsonLinesAction(stream), Recorder()])
    dispatcher.submit(detection("yes"))
    dispatcher.submit(detection("no"))
    dispatcher.close()
    assert [k for k, _ in seen] == ["yes", "no"]
    assert all(name == "kws-actions" for _, name in seen)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["keyword"] for line in lines] == ["yes", "no"]
    assert set(lines[0]) >= {"keyword", "score", "time", "offset_s", "model"}


def test_config_file(tmp_path):
    path = tmp_path / "kws.toml"
    path.write_text('''
model = "kws12"
device = "USB"
keywords = ["yes", "stop"]
[detector]
stride_ms = 60
refractory_s = 2
[thresholds]
stop = 0.8
[hooks]
timeout_s = 3
[hooks.commands]
yes = ["lights", "on"]
stop = [["mpc", "stop"], ["sh", "-c", "echo stopped"]]
''')
    config = load_config(path)
    assert config.models == ("kws12",) and config.device == "USB" and config.keywords == ("yes", "stop")
    assert config.detector == {"stride_ms": 60.0, "refractory_s": 2.0}
    assert config.thresholds == {"stop": 0.8}
    assert config.hooks.timeout_s == 3.0
    assert config.hooks.commands["yes"] == (("lights", "on"),)
    assert config.hooks.commands["stop"] == (("mpc", "stop"), ("sh", "-c", "echo stopped"))


@pytest.mark.parametrize("body,message", [
    ("modle = 'x'", "unknown key.*modle"),
    ("[detector]\nstride = 5", r"\[detector\]: unknown key.*stride"),
    ("[thresholds]\nyes = 'high'", "thresholds.yes must be a number"),
    ("[hooks.commands]\nyes = 'lights on'", "argv list"),
    ("[hooks]\ntimeout_s = -1", "timeout_s=-1.0: must be positive"),
    ("model = [", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- under stress


def test_hook_flooding_stdout_and_stderr_neither_blocks_nor_eats_memory(caplog):
    """50 MB on each of stdout and stderr: read as it comes, only a tail of stderr kept."""
    import tracemalloc

    flood = (PY, "-c", "import sys\n"
             "line = b'x' * 1023 + b'\\n'\n"
             "for _ in range(50 * 1024):\n"
             "    sys.stdout.buffer.write(line); sys.stderr.buffer.write(line)\n"
             "sys.stderr.write('lamp not found\\n'); sys.exit(4)")
    action = HookAction(HookSettings(commands={"yes": (flood,)}, timeout_s=60))
    tracemalloc.start()
    try:
        start = time.monotonic()
        with caplog.at_level(logging.ERROR):
            action.handle(detection())
            assert time.monotonic() - start < 1.0  # handle only starts it
            action.close()
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 50, elapsed  # not killed at its timeout: it ran to its end
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MB held while a hook wrote 50 MB to stderr"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("failed with exit status 4: lamp not found") for m in messages), messages


def test_hook_leaving_a_child_behind_is_done_when_it_exits(tmp_path, caplog):
    """A hook that starts something in the background and exits: its child keeps stderr open, yet the hook is done."""
    out = tmp_path / "child.txt"
    argv = ("sh", "-c", f"(sleep 8; echo late > {out}) & echo started")
    action = HookAction(HookSettings(commands={"yes": (argv,)}, timeout_s=20))
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        action.handle(detection())
        action.close()
    assert time.monotonic() - start < 5  # not waiting for the child, nor killing it at the timeout
    assert any("hook sh for 'yes' done" in r.getMessage() for r in caplog.records)
    assert not any("killed" in r.getMessage() for r in caplog.records)
    deadline = time.monotonic() + 20
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.read_text() == "late\n"  # the child was left alone


def test_hanging_hook_is_killed_with_its_children(tmp_path, caplog):
    out = tmp_path / "grandchild.txt"
    argv = ("sh", "-c", f"(sleep 3; echo survived > {out}) & sleep 60")
    action = HookAction(HookSettings(commands={"yes": (argv,)}, timeout_s=1.0))
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        action.handle(detection())
        action.close()
    assert 1.0 <= time.monotonic() - start < 10
    assert any("hook sh for 'yes' ran longer than 1.0 s and was killed" in r.getMessage() for r in caplog.records)
    time.sleep(4)
    assert not out.exists()  # its process group went with it


def test_max_parallel_drops_the_excess_with_one_log_line(tmp_path, caplog):
    """max_parallel=2 and 5 detections at once: 2 run, 3 are dropped (one line), none queued for later."""
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    hold = (PY, "-c", "import os, pathlib, sys, time\n"
            f"pathlib.Path({str(started)!r}, str(os.getpid())).write_text(os.environ['KWS_OFFSET_S'])\n"
            "deadline = time.monotonic() + 30\n"
            f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
            "    time.sleep(0.02)\n")
    action = HookAction(HookSettings(commands={"*": (hold,)}, max_parallel=2, timeout_s=60))
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        for i in range(5):
            action.handle(Detection("yes", 0.9, float(i), "kws12"))
        assert time.monotonic() - start < 1.0  # handle never waits for a free slot
        deadline = time.monotonic() + 30
        while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # time enough for a third to start, were it queued
        assert sorted(p.read_text() for p in started.iterdir()) == ["0.000", "1.000"]
        drops = [r.getMessage() for r in caplog.records]
        assert len(drops) == 1 and "not run: 2 hook(s) already running (hooks.max_parallel)" in drops[0], drops
        release.touch()
        action.close()  # both finish; the dropped ones never run
        assert len(list(started.iterdir())) == 2
        action.handle(Detection("stop", 0.9, 9.0, "kws12"))  # the slots are free again
        action.close()
    assert sorted(p.read_text() for p in started.iterdir()) == ["0.000", "1.000", "9.000"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[1] == "3 hook run(s) were dropped while 2 hook(s) were running " \
                                                 "(hooks.max_parallel)", messages
