"""``scripts/bench_runtime.py --quick``: the runtime benchmark's smoke test (structure and sanity, never timings).

One quick run of every installed engine (and, where PulseAudio is installed, ``kws
listen`` on a virtual microphone) into a temporary folder; its table, results.json and
plots are checked. A peer that cannot be imported is skipped with one line, and a
missing data folder stops with one error line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, one_error_line
from virtual_audio import pulseaudio_missing

SCRIPT = ROOT / "scripts" / "bench_runtime.py"
PEERS = {"mww": ("microWakeWord", "pymicro_wakeword"), "oww": ("openWakeWord", "pyopen_wakeword")}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, env=env, timeout=timeout, cwd=ROOT)


def installed_peers() -> list[str]:
    return [key for key, (_, module) in PEERS.items() if importlib.util.find_spec(module) is not None]


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def quick(shared_data, tmp_path_factory):
    """(out folder, stdout, stderr, results.json) of one ``--quick`` run."""
    out = tmp_path_factory.mktemp("bench")
    result = bench("--quick", "--out", str(out))
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return out, stdout, stderr, json.loads((out / "results.json").read_text())


def test_every_installed_engine_has_a_row(quick):
    out, stdout, stderr, results = quick
    expected = ["kws", *installed_peers()]
    assert list(results["engines"]) == expected
    for key in expected:
        engine = results["engines"][key]
        medians = {name: spread["median"] for name, spread in engine["summary"].items()}
        assert medians["cpu_s_per_audio_h"] > 0 and medians["core_percent"] > 0, medians
        assert medians["peak_rss_mb"] > 0 and medians["startup_ms"] > 0 and medians["decisions_per_s"] > 0, medians
        assert 0 < medians["rtf"] < 1, medians  # faster than real time, or nothing was measured
        assert len(engine["runs"]) == 1 and engine["runs"][0]["audio_s"] == pytest.approx(60, abs=0.1)
        assert f"| {engine['name']} | {engine['model']} |" in stdout
    for key in set(PEERS) - set(expected):
        assert key in results["skipped"] and f"skipping {PEERS[key][0]}: pip install 'kws[peers]'" in stderr


def test_kws_hears_most_inserted_keywords(quick):
    kws = quick[3]["engines"]["kws"]
    assert kws["inserted"] >= 3, kws["inserted"]
    assert kws["heard"] >= kws["inserted"] / 2, (kws["heard"], kws["inserted"])


def test_ratios_and_cpu_plot(quick):
    out, stdout, _, results = quick
    for key in installed_peers():
        name = f"kws / {PEERS[key][0]}"
        assert results["ratios"][name] > 0
        assert f"CPU per audio second, {name}: " in stdout
    assert is_png(out / "cpu.png")


def test_live_latency_startup_and_memory(quick):
    out, stdout, _, results = quick
    reason = pulseaudio_missing()
    if reason:
        assert results["live"]["skipped"] == reason
        pytest.skip(reason)
    live = results["live"]
    assert live["played"] == 3 and live["heard"] >= 2, live
    assert all(-0.5 < latency < 2.0 for latency in live["hook_latency_s"]), live["hook_latency_s"]
    assert live["hook_latency_ms"]["median"] <= live["hook_latency_ms"]["p90"]
    assert live["startup_ms"] > 0 and live["peak_rss_mb"] > 0 and live["core_percent_realtime"] > 0, live
    assert "`kws listen` on a virtual microphone" in stdout
    assert is_png(out / "latency.png")
    plain = live["plain_alsa"]
    assert plain["startup_ms"] > 0 and 0 < plain["peak_rss_mb"] < 1000, plain
    assert "`kws listen` on plain ALSA" in stdout


def test_a_peer_that_cannot_be_imported_is_skipped(shared_data, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "pyopen_wakeword.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")])))
    result = bench("--engines", "kws", "oww", "--minutes", "0.25", "--repeats", "1", "--no-latency",
                   "--out", str(tmp_path / "out"), env=env)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    assert "skipping openWakeWord: pip install 'kws[peers]'" in stderr
    assert "openWakeWord: skipped (hidden by the test" in stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["engines"]) == ["kws"] and "oww" in results["skipped"]


def test_a_missing_data_folder_is_one_error_line(tmp_path):
    result = bench("--engines", "kws", "--no-latency", "--librispeech", str(tmp_path / "nowhere"),
                   "--out", str(tmp_path / "out"))
    line = one_error_line(result, "bench_runtime")
    assert "nowhere" in line and "--librispeech" in line


def test_benchmark_speed_compares_models_side_by_side():
    """``benchmark_speed.py`` with two bundles: a block per model and the second's cost as ratios to the first."""
    script = ROOT / "scripts" / "benchmark_speed.py"
    result = subprocess.run([sys.executable, str(script), "--model", "kws12", "--model", "computer",
                             "--seconds", "2", "--repeats", "2"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("model ")] == ["kws12", "computer"]
    ratio = [line for line in lines if line.startswith("computer / kws12:")]
    assert len(ratio) == 1, result.stdout
    invoke, spotter = (float(part.split("x")[-1]) for part in ratio[0].split(":")[1].split(","))
    assert invoke > 0 and spotter > 0, ratio
