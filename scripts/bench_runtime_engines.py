#!/usr/bin/env python3
"""The worker of ``bench_runtime.py``: one engine over one WAV at full speed, in a process of its own.

    python scripts/bench_runtime_engines.py {kws,mww,oww} STREAM.wav [--model NAME]

Imports only what its engine needs (stdlib at the top; the engine's packages when it
is built), builds the engine, then reads the WAV with the ``wave`` module in 20 ms
chunks (never the whole file at once: that would dominate peak memory) and feeds each
chunk as the engine takes it: kws float32 through ``KeywordSpotter`` as ``kws listen``
does, the peers int16 bytes (they cut them into their own 10 ms / 80 ms steps). Prints
two JSON lines: ``{"event": "first_frame"}`` once the first chunk is processed (the
parent times start-up to it), then ``{"event": "result", ...}`` with the loop's CPU
(``time.process_time``, all threads) and wall time, the engine's decisions and the time
spent in its network calls, peak RSS (``VmHWM``) and the detections.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

SAMPLE_RATE_HZ = 16000
CHUNK_SAMPLES = 320  # 20 ms, as a microphone delivers them
PEERS_HINT = "pip install 'kws[peers]'"


class BenchError(Exception):
    """A problem the user can fix (a missing folder, a worker that failed): one line, exit 2."""


class KwsRunner:
    """kws as ``kws listen`` runs it: ``KeywordSpotter`` with the bundle's detector defaults, float32 chunks."""

    def __init__(self, model: str | None):
        import numpy as np

        from kws.bundle import load_bundle
        from kws.spotter import KeywordSpotter, detector_settings_for

        self._np = np
        bundle = load_bundle(model)
        self.model = bundle.name
        self.spotter = KeywordSpotter(bundle, detector_settings_for(bundle))
        self.decisions = 0
        self.model_s = 0.0
        predict = self.spotter.classifier.predict

        def timed_predict(window):  # the one call into the network per decision
            start = time.perf_counter()
            try:
                return predict(window)
            finally:
                self.model_s += time.perf_counter() - start
                self.decisions += 1

        self.spotter.classifier.predict = timed_predict

    def feed(self, pcm: bytes) -> list[tuple[str, float]]:
        audio = self._np.frombuffer(pcm, "<i2").astype(self._np.float32) * (1 / 32768)
        return [(d.keyword, d.offset_s) for d in self.spotter.feed(audio)]


class MicroWakeWordRunner:
    """pymicro-wakeword: its feature front end, then its streaming model; a detection when the averaged
    probability first exceeds the model's cutoff."""

    def __init__(self, model: str):
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        self.detector = MicroWakeWord.from_builtin(Model(model))
        self.features = MicroWakeWordFeatures()
        self.model = model
        self.model_s = 0.0
        self._calls = 0
        self._samples = 0
        self._active = False

    @property
    def decisions(self) -> int:
        return self._calls // self.detector.stride  # it invokes once every ``stride`` feature frames

    def feed(self, pcm: bytes) -> list[tuple[str, float]]:
        found = []
        self._samples += len(pcm) // 2
        for frame in self.features.process_streaming(pcm):
            start = time.perf_counter()
            probability = self.detector.process_streaming_prob(frame)
            self.model_s += time.perf_counter() - start
            self._calls += 1
            active = probability is not None and probability > self.detector.probability_cutoff
            if active and not self._active:
                found.append((self.detector.wake_word, self._samples / SAMPLE_RATE_HZ))
            self._active = active
        return found


class OpenWakeWordRunner:
    """pyopen-wakeword: mel-spectrogram and embedding networks, then the wake-word network; a detection
    when its probability first exceeds 0.5 (the package's default)."""

    THRESHOLD = 0.5

    def __init__(self, model: str):
        from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures

        self.features = OpenWakeWordFeatures.from_builtin()
        self.detector = OpenWakeWord.from_builtin(Model(model))
        self.model = model
        self.model_s = 0.0
        self.decisions = 0
        self._samples = 0
        self._active = False

    def feed(self, pcm: bytes) -> list[tuple[str, float]]:
        found = []
        self._samples += len(pcm) // 2
        embeddings = iter(self.features.process_streaming(pcm))
        while True:
            start = time.perf_counter()
            embedding = next(embeddings, None)  # the mel-spectrogram and embedding networks
            self.model_s += time.perf_counter() - start
            if embedding is None:
                return found
            start = time.perf_counter()
            probabilities = list(self.detector.process_streaming(embedding))
            self.model_s += time.perf_counter() - start
            self.decisions += len(probabilities)
            for probability in probabilities:
                active = probability > self.THRESHOLD
                if active and not self._active:
                    found.append((self.model, self._samples / SAMPLE_RATE_HZ))
                self._active = active


@dataclass(frozen=True)
class Engine:
    key: str
    name: str
    module: str
    """Imported (by the parent) to check that the engine is installed."""
    runner: Callable[[Any], Any]
    """Builds the engine in the worker: ``runner(model)``, with ``feed(pcm bytes) -> [(keyword, offset_s)]``,
    ``decisions`` (wake-word network outputs), ``model_s`` (time in the networks) and ``model`` (its name)."""
    default_model: str | None
    """Passed as ``--model`` when the user gives none (None: the engine's own default)."""
    install_hint: str


ENGINES = {engine.key: engine for engine in (
    Engine("kws", "kws", "kws.spotter", KwsRunner, None, "pip install ."),
    Engine("mww", "microWakeWord", "pymicro_wakeword", MicroWakeWordRunner, "hey_jarvis", PEERS_HINT),
    Engine("oww", "openWakeWord", "pyopen_wakeword", OpenWakeWordRunner, "hey_jarvis", PEERS_HINT),
)}


def peak_rss_kb() -> int:
    """``VmHWM`` of this process (``ru_maxrss`` where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(engine_key: str, wav_path: Path, model: str | None) -> dict:
    """Feed the WAV to the engine; prints ``first_frame`` after the first chunk; returns the result."""
    runner = ENGINES[engine_key].runner(model)
    detections = []
    with wave.open(str(wav_path), "rb") as wav:
        if (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) != (SAMPLE_RATE_HZ, 2, 1):
            raise BenchError(f"{wav_path}: need 16 kHz 16-bit mono")
        samples = wav.getnframes()
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        detections += runner.feed(wav.readframes(CHUNK_SAMPLES))
        print(json.dumps({"event": "first_frame"}), flush=True)
        while True:
            pcm = wav.readframes(CHUNK_SAMPLES)
            if not pcm:
                break
            detections += runner.feed(pcm)
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
    return {"event": "result", "engine": engine_key, "model": runner.model, "audio_s": samples / SAMPLE_RATE_HZ,
            "cpu_s": cpu_s, "wall_s": wall_s, "decisions": runner.decisions, "model_s": runner.model_s,
            "peak_rss_kb": peak_rss_kb(),
            "detections": [[keyword, round(offset_s, 3)] for keyword, offset_s in detections]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=list(ENGINES))
    parser.add_argument("wav", type=Path)
    parser.add_argument("--model", help="kws: a bundle name or path; the peers: a built-in model")
    args = parser.parse_args(argv)
    result = run(args.engine, args.wav, args.model)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
