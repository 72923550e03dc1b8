"""Hook commands: environment, JSON on stdin, timeout, failure; and the TOML config."""

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
