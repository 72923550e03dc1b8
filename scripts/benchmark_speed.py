#!/usr/bin/env python3
"""How much CPU the runtime needs per second of audio, measured side by side in one run.

    python scripts/benchmark_speed.py [--model kws12] [--seconds 60] [--repeats 5]

Prints medians over the repeats of: one interpreter invoke, MFCC of one new
frame in streaming mode, and the whole spotter (features + inference every
stride + detector) as a share of one core at real time (CPU time / audio time).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per spotter run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stride-ms", type=float, default=100.0)
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    rate = bundle.features.sample_rate_hz
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(int(args.seconds * rate))).astype(np.float32)

    classifier = Classifier(make_interpreter(bundle.model_content))
    window = rng.standard_normal((bundle.window_frames, bundle.features.n_mfcc)).astype(np.float32) * 10
    invoke_s = median_time(lambda: classifier.predict(window), args.repeats, 2000)

    stream = Mfcc(bundle.features).stream()
    hop = bundle.features.hop_samples
    chunk = audio[:hop]
    stream.feed(audio[: bundle.features.window_samples])
    frame_s = median_time(lambda: stream.feed(chunk), args.repeats, 2000)

    shares = []
    for _ in range(args.repeats):
        spotter = KeywordSpotter(bundle, detector_settings_for(bundle, stride_ms=args.stride_ms))
        start = time.process_time()
        for i in range(0, audio.size, 320):  # 20 ms chunks, as a microphone delivers them
            spotter.feed(audio[i : i + 320])
        shares.append((time.process_time() - start) / args.seconds)

    print(f"model {bundle.name} ({bundle.size_bytes} bytes, {bundle.macs} MACs), backend {backend().name}, "
          f"median of {args.repeats}")
    print(f"  one invoke                   {invoke_s * 1e6:8.1f} us")
    print(f"  MFCC, one new frame (stream) {frame_s * 1e6:8.1f} us")
    print(f"  whole spotter, stride {args.stride_ms:g} ms: {100 * statistics.median(shares):.2f}% of one core "
          f"at real time (min {100 * min(shares):.2f}%, max {100 * max(shares):.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
