#!/usr/bin/env python3
"""Evaluate a model bundle on a test folder (``<label>/*`` audio) with the runtime alone.

Prints accuracy, per-class recall, the confusion matrix, size, parameters and MACs,
so anyone can check a model card:

    python scripts/benchmark_accuracy.py ../shared/data/speech_commands_test_a [--model kws12]

Each clip is scored the way ``kws classify`` scores it: decoded to 16 kHz mono,
its loudest model window (zero-padded if shorter), MFCC, the int8 interpreter.
Folders whose name is not a label of the model count as ``_unknown_``. Needs the
checkout (it reads the folder with ``training.data``), not TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kws.audio_file import read_audio
from kws.bundle import load_bundle
from kws.cli import loudest_window
from kws.features import Mfcc
from kws.interpreter import Classifier, backend, make_interpreter
from training.data import scan_labelled_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="test folder in the <label>/* layout")
    parser.add_argument("--model", default=None, help="bundle name or path (default: the bundled kws12)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    classifier = Classifier(make_interpreter(bundle.model_content))
    mfcc = Mfcc(bundle.features)
    labels = list(bundle.labels)
    n = len(labels)
    confusion = np.zeros((n, n), np.int64)
    start = time.perf_counter()
    for clip in scan_labelled_folder(args.folder):
        label = clip.label(labels)
        if label not in labels:  # a model without _unknown_
            continue
        audio = read_audio(clip.path, bundle.features.sample_rate_hz)
        window = loudest_window(audio, bundle.window_samples, bundle.features.hop_samples)
        scores = classifier.predict(mfcc.compute(window)[: bundle.window_frames])
        confusion[labels.index(label), int(np.argmax(scores))] += 1
    seconds = time.perf_counter() - start
    totals = confusion.sum(axis=1)
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    recall = {label: float(confusion[i, i] / totals[i]) if totals[i] else None for i, label in enumerate(labels)}
    result = {"model": bundle.name, "folder": str(args.folder), "clips": int(confusion.sum()),
              "accuracy": round(accuracy, 4), "recall": {k: (round(v, 4) if v is not None else None) for k, v in recall.items()},
              "size_bytes": bundle.size_bytes, "parameters": bundle.parameters, "macs": bundle.macs,
              "backend": backend().name, "confusion": confusion.tolist()}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {bundle.name}: {bundle.size_bytes} bytes, {bundle.parameters} parameters, {bundle.macs} MACs "
          f"({backend().name})")
    print(f"{args.folder}: {result['clips']} clips in {seconds:.1f} s, accuracy {accuracy:.4f}")
    width = max(len(l) for l in labels)
    print("per-class recall:")
    for label, value in recall.items():
        print(f"  {label:<{width}}  {value:.4f}  ({totals[labels.index(label)]} clips)" if value is not None
              else f"  {label:<{width}}  -")
    print("confusion (rows: true, columns: predicted, in label order):")
    print("  " + " ".join(f"{l[:5]:>5}" for l in labels))
    for label, row in zip(labels, confusion):
        print("  " + " ".join(f"{v:5d}" for v in row) + f"  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
