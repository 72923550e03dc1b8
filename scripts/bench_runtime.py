#!/usr/bin/env python3
"""Runtime cost of kws beside microWakeWord and openWakeWord: each engine in a process of its own, on the same audio.

    python scripts/bench_runtime.py [--engines kws mww oww] [--minutes 10] [--repeats 5] [--seed 0]
        [--model kws12] [--out runs/bench_runtime] [--no-latency] [--live-keywords 24] [--quick]
        [--keyword-clips DIR] [--librispeech DIR] [--noise DIR]

**Stream** (``bench_runtime_streams.py``): one long 16 kHz mono 16-bit WAV
(``--minutes``, default 10) of real audio, made with ``--seed``: keyword-free LibriSpeech
utterances with ``speech_commands_test_a`` clips of the kws model's keywords between
them, over household noise 20 dB below the speech; a JSON beside it says where each
keyword's speech starts and ends. Both are cached in ``OUT/streams`` by model, seed and
length. Data folders default to ``../shared/data/...`` (``$KWS_SHARED``); one that is
missing stops with one line (exit 2).

**Engines** (``bench_runtime_engines.py``, the worker): ``kws`` (``KeywordSpotter`` with
the bundle's detector defaults: what ``kws listen`` runs), ``mww`` (pymicro-wakeword
2.5.0) and ``oww`` (pyopen-wakeword 1.1.0), both with their built-in ``hey_jarvis``; the
peers come with ``pip install 'kws[peers]'``, and one that is not installed is skipped
with one line. Every run is a fresh process that builds its engine and feeds it the WAV
in 20 ms chunks at full speed, with ``OMP_NUM_THREADS=1`` and ``OPENBLAS_NUM_THREADS=1``
(kws runs its interpreter on one thread, the peers their TFLite C library's default).
Engines are interleaved per repetition (kws, mww, oww, kws, ...) so that drift in the
machine's load hits all alike.

Per engine, medians over ``--repeats`` (default 5): CPU seconds per hour of audio
(``time.process_time`` around the feeding loop, all threads; min-max too) and as a share
of one core; wall-clock real-time factor; decisions (wake-word network outputs) per
second; CPU per decision (the loop's CPU over decisions: features, networks, detector);
model time per decision, timed around the network calls (kws: the DS-CNN invoke; mWW:
its streaming model with input quantisation; oWW: its mel-spectrogram, embedding and
wake-word networks, all three run once per 80 ms decision); peak RSS (``VmHWM`` at the
end); start-up (spawn to the first chunk processed: interpreter, imports, model loading
and the first chunk, for oWW including the 8 s of zeros it "autofills" on its first
chunk); keywords heard (kws: inserted keywords detected, from the start of their speech
to 1.5 s after its end, and other detections; the peers' wake word is not in the
stream, so theirs are all false). Then the ratios of the median CPU per audio second,
kws over each peer.

**Live** (``bench_runtime_live.py``; on unless ``--no-latency``, skipped with the reason
where PulseAudio is not installed): ``kws listen`` on a private PulseAudio virtual
microphone hears a stream of ``--live-keywords`` keywords (default 24, 3 to 4 s apart):
latency from the end of each keyword's speech to its hook's start (median, 90th
percentile) and to the detection's ``time`` (negative when the model fires before the
estimated end of the word), keywords heard, start to listening (spawn to ``READY=1``,
median of ``--repeats`` launches), peak RSS and CPU share at real time.

**Output**: markdown tables and ratios on stdout, progress on stderr; in ``--out``
(default ``runs/bench_runtime``): ``results.json`` (every run), ``cpu.png``, with the live
part ``latency.png`` and ``listen.log`` (stderr of ``kws listen``). ``--quick`` (the CI
smoke run) means 1 minute, 1 repetition and 3 live keywords, unless given otherwise.
The script measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from bench_runtime_engines import ENGINES, BenchError, Engine

_LOGGER = logging.getLogger(__name__)

PROGRAM = "bench_runtime"
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("bench_runtime_engines.py")
SHARED_DATA = Path(os.environ.get("KWS_SHARED", ROOT.parent / "shared")) / "data"
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
"""Added to every worker's environment alike."""


@dataclass(frozen=True)
class BenchSettings:
    engines: tuple[str, ...]
    """Keys of ``ENGINES``, in the order they run in each repetition."""
    minutes: float
    """Length of the stream every engine processes."""
    repeats: int
    """Runs per engine (interleaved); also launches of ``kws listen`` for its start-up time."""
    seed: int
    """Seeds the streams."""
    model: str | None
    """kws bundle (name or path); None: the default."""
    out: Path
    """Results, plots, logs and the cached streams."""
    live: bool
    """Run ``kws listen`` on a virtual microphone (latency, start to listening, its peak RSS)."""
    live_keywords: int
    """Keywords in the live stream."""


# --------------------------------------------------------------------------- runs


def missing(engine: Engine) -> str | None:
    """Why ``engine`` cannot run here, or None."""
    try:
        importlib.import_module(engine.module)
    except ImportError as error:
        return f"{error}; {engine.install_hint}"
    return None


def run_worker(engine: Engine, wav: Path, model: str | None) -> dict:
    """One run of ``engine`` in a fresh process: its result plus ``startup_s`` (spawn to first chunk processed)."""
    command = [sys.executable, str(WORKER), engine.key, str(wav)]
    model = model if engine.key == "kws" else engine.default_model
    if model:
        command += ["--model", str(model)]
    with tempfile.TemporaryFile() as stderr:
        spawned = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, **WORKER_ENV), cwd=ROOT, text=True)
        first = process.stdout.readline()
        first_at = time.monotonic()
        rest = process.stdout.read()
        code = process.wait()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip().splitlines()
    lines = [line for line in (first + rest).splitlines() if line.strip()]
    try:
        events = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        events = []
    if code != 0 or len(events) != 2 or events[0].get("event") != "first_frame":
        raise BenchError(f"the {engine.name} worker failed (exit {code}): " + " | ".join(errors[-3:] or lines[-3:]))
    return dict(events[1], startup_s=first_at - spawned)


def figures_of(result: dict) -> dict:
    """The per-run figures of the table, from a worker's result."""
    audio_s, decisions = result["audio_s"], max(result["decisions"], 1)
    return {"cpu_s_per_audio_h": result["cpu_s"] / audio_s * 3600,
            "core_percent": 100 * result["cpu_s"] / audio_s,
            "rtf": result["wall_s"] / audio_s,
            "decisions_per_s": result["decisions"] / audio_s,
            "cpu_us_per_decision": 1e6 * result["cpu_s"] / decisions,
            "model_us_per_decision": 1e6 * result["model_s"] / decisions,
            "peak_rss_mb": result["peak_rss_kb"] / 1024,
            "startup_ms": 1000 * result["startup_s"]}


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": os.getloadavg()}


def run(settings: BenchSettings, data) -> dict:
    from bench_runtime_streams import StreamSpec, match_keywords, stream_for
    from kws.bundle import atomic_write, load_bundle
    from kws.interpreter import backend

    bundle = load_bundle(settings.model)
    engines, skipped = [], {}
    for key in settings.engines:
        reason = missing(ENGINES[key])
        if reason is None:
            engines.append(ENGINES[key])
        else:
            skipped[key] = reason
            _LOGGER.warning("skipping %s: %s", ENGINES[key].name, ENGINES[key].install_hint)
    if not engines:
        raise BenchError("no engine to run: " + "; ".join(f"{ENGINES[k].name}: {r}" for k, r in skipped.items()))
    live = None
    if settings.live:
        from bench_runtime_live import pulseaudio_missing

        reason = pulseaudio_missing()
        if reason:
            live = {"skipped": reason}
            _LOGGER.warning("skipping the live part: %s", reason)
    settings.out.mkdir(parents=True, exist_ok=True)
    for stale in ("cpu.png", "latency.png"):
        (settings.out / stale).unlink(missing_ok=True)
    streams = settings.out / "streams"
    stream = stream_for(StreamSpec("cpu", bundle.name, settings.seed, seconds=settings.minutes * 60),
                        bundle.keywords, data, streams)
    machine = dict(_machine(), kws_backend=backend().name)

    runs: dict[str, list[dict]] = {engine.key: [] for engine in engines}
    for repeat in range(settings.repeats):
        for engine in engines:
            _LOGGER.info("repetition %d/%d: %s", repeat + 1, settings.repeats, engine.name)
            runs[engine.key].append(run_worker(engine, stream.wav, settings.model))

    results: dict[str, Any] = {
        "settings": dict(asdict(settings), out=str(settings.out), data={k: str(v) for k, v in asdict(data).items()},
                         worker_env=WORKER_ENV),
        "machine": machine, "skipped": skipped,
        "stream": {"wav": str(stream.wav), "seconds": stream.seconds, "keywords": len(stream.keywords)},
        "engines": {}, "ratios": {}}
    for engine in engines:
        figures = [figures_of(r) for r in runs[engine.key]]
        first = runs[engine.key][0]
        detections = [(keyword, offset_s) for keyword, offset_s in first["detections"]]
        if engine.key == "kws":
            found, other = match_keywords(stream.keywords, detections)
            heard = len(found)
        else:
            heard, other = 0, len(detections)
        results["engines"][engine.key] = {
            "key": engine.key, "name": engine.name, "model": first["model"], "runs": runs[engine.key],
            "figures": figures, "summary": {name: _spread([f[name] for f in figures]) for name in figures[0]},
            "inserted": len(stream.keywords), "heard": heard, "other_detections": other}
    if "kws" in results["engines"]:
        kws_cpu = results["engines"]["kws"]["summary"]["core_percent"]["median"]
        for key in ("mww", "oww"):
            if key in results["engines"]:
                peer = results["engines"][key]["summary"]["core_percent"]["median"]
                results["ratios"][f"kws / {ENGINES[key].name}"] = kws_cpu / peer if peer > 0 else None

    if settings.live and live is None:
        from bench_runtime_live import measure_live

        live_stream = stream_for(StreamSpec("live", bundle.name, settings.seed, keywords=settings.live_keywords),
                                 bundle.keywords, data, streams)
        _LOGGER.info("kws listen on a virtual microphone")
        live = measure_live(live_stream, settings.model, settings.repeats, settings.out)
        if "skipped" not in live:
            from bench_runtime_live import measure_plain_alsa

            _LOGGER.info("kws listen on plain ALSA (memory and start-up)")
            live["plain_alsa"] = measure_plain_alsa(live_stream, settings.model, settings.repeats, settings.out)
    if live is not None:
        results["live"] = live
    machine["load_average_end"] = os.getloadavg()

    plot_cpu(results, settings.out / "cpu.png")
    if live and live.get("hook_latency_s"):
        plot_latency(live, settings.out / "latency.png")
    atomic_write(settings.out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    return results


# --------------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    """Three significant digits, at most."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(results: dict) -> str:
    lines = [f"Stream: {results['stream']['seconds'] / 60:g} min ({Path(results['stream']['wav']).name}), "
             f"{results['stream']['keywords']} keywords; {results['settings']['repeats']} repetition(s), medians; "
             f"{results['machine']['cpu']}, load average {results['machine']['load_average_start'][0]:.2f} at start, "
             f"{results['machine']['load_average_end'][0]:.2f} at end.", "",
             "| engine | model | CPU s / audio h (min-max) | % of one core | RTF | decisions / s | CPU µs / decision "
             "| model µs / decision | peak RSS MB | start-up ms | keywords heard |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for engine in results["engines"].values():
        m = {name: spread["median"] for name, spread in engine["summary"].items()}
        cpu = engine["summary"]["cpu_s_per_audio_h"]
        heard = (f"{engine['heard']}/{engine['inserted']} (+{engine['other_detections']} other)"
                 if engine["key"] == "kws" else f"n/a ({engine['other_detections']} false)")
        lines.append(f"| {engine['name']} | {engine['model']} | {_fmt(cpu['median'])} ({_fmt(cpu['min'])}-"
                     f"{_fmt(cpu['max'])}) | {_fmt(m['core_percent'])} | {m['rtf']:.4f} | {_fmt(m['decisions_per_s'])} "
                     f"| {_fmt(m['cpu_us_per_decision'])} | {_fmt(m['model_us_per_decision'])} "
                     f"| {m['peak_rss_mb']:.1f} | {m['startup_ms']:.0f} | {heard} |")
    lines.append("")
    for key, reason in results["skipped"].items():
        lines.append(f"{ENGINES[key].name}: skipped ({reason})")
    for name, ratio in results["ratios"].items():
        lines.append(f"CPU per audio second, {name}: {ratio:.3g} (1/{1 / ratio:.3g})" if ratio
                     else f"CPU per audio second, {name}: n/a")
    live = results.get("live")
    if live and "skipped" in live:
        lines += ["", f"kws listen (live): skipped ({live['skipped']})"]
    elif live:
        nan = {"median": float("nan"), "p90": float("nan")}
        hook, detection = live.get("hook_latency_ms", nan), live.get("detection_latency_ms", nan)
        lines += ["", f"`kws listen` on a virtual microphone ({live['played']} keywords, "
                  f"{live['stream_seconds']:.0f} s; start-up median of {len(live['startup_s'])}):", "",
                  "| latency to hook, median ms | p90 ms | latency to detection, median ms | keywords heard "
                  "| start to listening ms | peak RSS MB | % of one core at real time |",
                  "|---|---|---|---|---|---|---|",
                  f"| {hook['median']:.0f} | {hook['p90']:.0f} | {detection['median']:.0f} "
                  f"| {live['heard']}/{live['played']} (+{live['other_detections']} other) | {live['startup_ms']:.0f} "
                  f"| {live['peak_rss_mb']:.1f} | {live['core_percent_realtime']:.2f} |"]
        plain = live.get("plain_alsa")
        if plain and "skipped" in plain:
            lines += ["", f"kws listen on plain ALSA: skipped ({plain['skipped']})"]
        elif plain:
            lines += ["", f"`kws listen` on plain ALSA (no desktop ALSA plugins, as on Raspberry Pi OS Lite; "
                      f"median of {len(plain['startup_s'])}): peak RSS {plain['peak_rss_mb']:.1f} MB, "
                      f"start to listening {plain['startup_ms']:.0f} ms"]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cpu(results: dict, path: Path) -> None:
    plt = _pyplot()
    engines = list(results["engines"].values())
    spreads = [e["summary"]["core_percent"] for e in engines]
    medians = [s["median"] for s in spreads]
    errors = [[s["median"] - s["min"] for s in spreads], [s["max"] - s["median"] for s in spreads]]
    figure, axes = plt.subplots(figsize=(7, 1.4 + 0.8 * len(engines)))
    axes.barh([f"{e['name']}\n{e['model']}" for e in engines], medians, xerr=errors, capsize=3,
              color=["#2a7" if e["key"] == "kws" else "#888" for e in engines])
    axes.set_xscale("log")
    axes.set_xlim(min(medians) / 3, max(medians) * 10)
    axes.invert_yaxis()
    for y, value in enumerate(medians):  # beside the error bar
        axes.text(spreads[y]["max"], y, f"  {value:.3g}%", va="center")
    axes.set_xlabel("CPU, % of one core at real time (log scale; median, min-max)")
    axes.set_title(f"{results['stream']['seconds'] / 60:g} min of audio, {results['settings']['repeats']} "
                   "repetition(s), one process per run")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_latency(live: dict, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    hook = np.array(live["hook_latency_s"]) * 1000
    detection = np.array(live["detection_latency_s"]) * 1000
    both = np.concatenate([hook, detection])
    bins = np.arange(np.floor(both.min() / 20) * 20, both.max() + 20, 20)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.hist(detection, bins=bins, alpha=0.45, color="#888", label="to detection (its JSON time)")
    axes.hist(hook, bins=bins, alpha=0.7, color="#2a7", label="to hook start")
    axes.plot(hook, np.zeros_like(hook), "|", color="k", markersize=12)
    for value, style, name in ((np.median(hook), "-", "median"), (np.percentile(hook, 90), "--", "p90")):
        axes.axvline(value, color="k", linestyle=style, label=f"hook {name}: {value:.0f} ms")
    axes.set_xlabel("latency after the end of the keyword's speech, ms (20 ms bins)")
    axes.set_ylabel("keywords")
    axes.set_title(f"kws listen on a virtual microphone: {live['heard']}/{live['played']} keywords heard")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help="engines, in their order per repetition (default: all; a peer not installed is skipped)")
    parser.add_argument("--minutes", type=float, help="length of the stream (default 10; --quick: 1)")
    parser.add_argument("--repeats", type=int, help="runs per engine, interleaved (default 5; --quick: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the streams (default 0)")
    parser.add_argument("--model", help="kws bundle: a name in models/ or a path (default kws12)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_runtime",
                        help="results, plots and cached streams (default runs/bench_runtime)")
    parser.add_argument("--no-latency", action="store_true", help="skip the live part (kws listen on PulseAudio)")
    parser.add_argument("--live-keywords", type=int, help="keywords in the live stream (default 24; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 1 minute, 1 repetition, 3 live keywords")
    parser.add_argument("--keyword-clips", type=Path, default=SHARED_DATA / "speech_commands_test_a", metavar="DIR",
                        help="<word>/*.flac keyword clips (default ../shared/data/speech_commands_test_a)")
    parser.add_argument("--librispeech", type=Path, default=SHARED_DATA / "librispeech_dev_clean_part", metavar="DIR",
                        help="LibriSpeech with INDEX.csv (default ../shared/data/librispeech_dev_clean_part)")
    parser.add_argument("--noise", type=Path, default=SHARED_DATA / "household_noise", metavar="DIR",
                        help="noise recordings (default ../shared/data/household_noise)")
    args = parser.parse_args(argv)
    for name in ("minutes", "repeats", "live_keywords"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def settings_from(args: argparse.Namespace) -> BenchSettings:
    def chosen(value, default, quick):
        return value if value is not None else (quick if args.quick else default)

    return BenchSettings(engines=tuple(dict.fromkeys(args.engines)), minutes=chosen(args.minutes, 10.0, 1.0),
                         repeats=chosen(args.repeats, 5, 1), seed=args.seed, model=args.model, out=args.out.resolve(),
                         live=not args.no_latency, live_keywords=chosen(args.live_keywords, 24, 3))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROGRAM}: %(message)s")
    from bench_runtime_streams import DataPaths
    from kws.errors import KwsError

    settings = settings_from(args)
    try:
        results = run(settings, DataPaths(args.keyword_clips, args.librispeech, args.noise))
    except (BenchError, KwsError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    print(markdown(results))
    written = ["results.json", "cpu.png"] + [name for name in ("latency.png", "listen.log")
                                              if (settings.out / name).exists() and "live" in results
                                              and "skipped" not in results["live"]]
    print(f"\nwrote {', '.join(written)} in {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
