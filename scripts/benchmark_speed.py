#!/usr/bin/env python3
"""How much CPU the runtime needs per second of audio, measured side by side in one run.

    python scripts/benchmark_speed.py [--model kws12 [--model computer ...]] [--seconds 60] [--repeats 5]

Prints medians over the repeats of: one interpreter invoke, MFCC of one new
frame in streaming mode, and the whole spotter (features + inference every
stride + detector) as a share of one core at real time (CPU time / audio time).
With several ``--model``, their repeats are interleaved (A, B, A, B, ...) so that
drift in the machine's load hits all alike, and the last lines give each model's
invoke and spotter medians as ratios to the first one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from kws.bundle import load_bundle
from kws.features import Mfcc
from kws.interpreter import Classifier, backend, make_interpreter
from kws.spotter import KeywordSpotter, detector_settings_for


def median_time(func, repeats: int, inner: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            func()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def measure(bundle, audio: np.ndarray, stride_ms: float, rng: np.random.Generator) -> dict:
    """One repeat of each measurement for one bundle: invoke and MFCC frame times (s), spotter CPU share."""
    classifier = Classifier(make_interpreter(bundle.model_content))
    window = rng.standard_normal((bundle.window_frames, bundle.features.n_mfcc)).astype(np.float32) * 10
    invoke_s = median_time(lambda: classifier.predict(window), 1, 2000)

    stream = Mfcc(bundle.features).stream()
    hop = bundle.features.hop_samples
    chunk = audio[:hop]
    stream.feed(audio[: bundle.features.window_samples])
    frame_s = median_time(lambda: stream.feed(chunk), 1, 2000)

    spotter = KeywordSpotter(bundle, detector_settings_for(bundle, stride_ms=stride_ms))
    rate = bundle.features.sample_rate_hz
    start = time.process_time()
    for i in range(0, audio.size, 320):  # 20 ms chunks, as a microphone delivers them
        spotter.feed(audio[i : i + 320])
    share = (time.process_time() - start) / (audio.size / rate)
    return {"invoke": invoke_s, "frame": frame_s, "share": share}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a bundle name or path; repeat to compare (default kws12)")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per spotter run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stride-ms", type=float, default=100.0)
    args = parser.parse_args()

    bundles = [load_bundle(name) for name in (args.model or [None])]
    rng = np.random.default_rng(0)
    rate = bundles[0].features.sample_rate_hz
    audio = (0.05 * rng.standard_normal(int(args.seconds * rate))).astype(np.float32)
    runs: list[list[dict]] = [[] for _ in bundles]
    for _ in range(args.repeats):
        for bundle, results in zip(bundles, runs):
            results.append(measure(bundle, audio, args.stride_ms, rng))

    medians = []
    for bundle, results in zip(bundles, runs):
        median = {key: statistics.median(r[key] for r in results) for key in results[0]}
        shares = [r["share"] for r in results]
        medians.append(median)
        print(f"model {bundle.name} ({bundle.size_bytes} bytes, {bundle.macs} MACs), backend {backend().name}, "
              f"median of {args.repeats}")
        print(f"  one invoke                   {median['invoke'] * 1e6:8.1f} us")
        print(f"  MFCC, one new frame (stream) {median['frame'] * 1e6:8.1f} us")
        print(f"  whole spotter, stride {args.stride_ms:g} ms: {100 * median['share']:.2f}% of one core "
              f"at real time (min {100 * min(shares):.2f}%, max {100 * max(shares):.2f}%)")
    for bundle, median in zip(bundles[1:], medians[1:]):
        print(f"{bundle.name} / {bundles[0].name}: invoke x{median['invoke'] / medians[0]['invoke']:.2f}, "
              f"whole spotter x{median['share'] / medians[0]['share']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
