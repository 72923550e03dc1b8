#!/usr/bin/env python3
"""Wall time of one training epoch through Keras' ``fit`` and through ``training.train.fit_epoch``, side by side.

    python scripts/benchmark_fit.py [--architecture ds-cnn-l] [--examples 3000] [--window-s 1.16] [--epochs 8]

Builds the model and loss ``kws-train custom`` trains (3 classes, its 1.16-s windows of the
default features), compiled once, and trains it on the same random features, alternating one
epoch through ``fit(..., epochs=e + 1, initial_epoch=e)`` (as ``kws-train`` did before)
and one through ``fit_epoch``. Also times the validation predictions of 500 windows through
``predict`` and ``training.evaluate.predict_float``. Prints, for each, the median wall time
and CPU time (both cores together) over the epochs, the wall time's mean, least and most (the
wait that ``fit`` can leave comes in some epochs, not all), and the ratio of the medians. The
first epoch of each (tracing) is left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="ds-cnn-l")
    parser.add_argument("--examples", type=int, default=3000, help="examples per epoch (kws-train custom: 3000)")
    parser.add_argument("--window-s", type=float, default=1.16, help="window (kws-train custom: 1.16 s)")
    parser.add_argument("--epochs", type=int, default=8, help="timed epochs of each (default 8)")
    return parser.parse_args(argv)


def timed(func) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    func()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras

    from kws.features import FeatureSettings
    from training.distill import DistillSettings
    from training.evaluate import predict_float
    from training.models import build_model, logits_model
    from training.train import fit_epoch, make_loss

    features = FeatureSettings()
    frames, classes, batch = features.frames_for(round(args.window_s * features.sample_rate_hz)), 3, 100
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.examples, frames, features.n_mfcc, 1)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, args.examples)]
    x_val = x[:500, ..., 0]
    keras.utils.set_random_seed(0)
    model = build_model(args.architecture, (frames, features.n_mfcc), classes)
    trainable = logits_model(model)
    loss, accuracy = make_loss(classes, 0.05, DistillSettings())
    trainable.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[accuracy])

    ways = {
        "fit": lambda e: trainable.fit(x, y, batch_size=batch, epochs=e + 1, initial_epoch=e, verbose=0),
        "fit_epoch": lambda e: fit_epoch(trainable, x, y, batch, np.random.default_rng(e)),
        "predict": lambda e: model.predict(x_val[..., None], batch_size=500, verbose=0),
        "predict_float": lambda e: predict_float(model, x_val),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for epoch in range(args.epochs + 1):
        for name, way in ways.items():
            measured = timed(lambda: way(epoch))
            if epoch:
                times[name].append(measured)
    print(f"{args.architecture}, {args.examples} examples of {frames} x {features.n_mfcc} per epoch, batch {batch}; "
          f"medians of {args.epochs} epochs (after one untimed), alternating:")
    medians = {}
    for name, rows in times.items():
        wall, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        medians[name] = wall
        walls = [r[0] for r in rows]
        print(f"  {name:14s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  (wall mean {statistics.mean(walls):.2f}, "
              f"min {min(walls):.2f}, max {max(walls):.2f})")
    print(f"  fit / fit_epoch wall: {medians['fit'] / medians['fit_epoch']:.2f}; "
          f"predict / predict_float wall: {medians['predict'] / medians['predict_float']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
