#!/usr/bin/env python3
"""Streaming detection: hit rate on keyword clips and false accepts per hour on other speech.

    python scripts/benchmark_detection.py --speech-commands ../shared/data/speech_commands \\
        --librispeech ../shared/data/librispeech_dev_clean_part [--model kws12] \\
        [--thresholds 0.5 0.6 0.7] [--smoothing 0 0.2 0.3]

Positives: every keyword clip of the Speech Commands validation split, alone in
1.5 s of quiet noise before and after, streamed through the model as ``kws
detect`` would; a hit is a detection of the right keyword (any other keyword
counts as a false accept). Negatives: LibriSpeech utterances whose transcript
holds none of the keywords, streamed back to back; every detection there is a
false accept. The model's scores are computed once per stream (one inference
every stride) and each detector setting replays them, so settings compare on
identical inputs. Use the validation split to choose thresholds, never a test set.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from kws.audio_file import read_audio
from kws.bundle import load_bundle
from kws.detector import Detector, DetectorSettings
from kws.features import Mfcc
from kws.interpreter import Classifier, make_interpreter

PAD_S = 1.5


def score_stream(bundle, classifier, mfcc, audio: np.ndarray, stride_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities at every stride once the first window is full, and the stream time of each."""
    features = mfcc.compute(audio)
    window = bundle.window_frames
    ends = np.arange(window, len(features) + 1, stride_frames)
    probabilities = np.stack([classifier.predict(features[e - window : e]) for e in ends]) if len(ends) else \
        np.zeros((0, len(bundle.labels)), np.float32)
    times = np.array([bundle.features.samples_for(e) / bundle.features.sample_rate_hz for e in ends])
    return probabilities, times


def replay(bundle, settings: DetectorSettings, probabilities, times) -> list[str]:
    detector = Detector(bundle.labels, settings)
    return [d.keyword for d in (detector.process(p, t) for p, t in zip(probabilities, times)) if d]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--speech-commands", type=Path, required=True, help="root with validation_list.txt")
    parser.add_argument("--librispeech", type=Path, required=True, help="folder with INDEX.csv")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.2, 0.3])
    parser.add_argument("--stride-ms", type=float, default=100.0)
    parser.add_argument("--refractory-s", type=float, default=1.0)
    parser.add_argument("--max-clips", type=int, default=0, help="per keyword (0 = all)")
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    classifier = Classifier(make_interpreter(bundle.model_content))
    mfcc = Mfcc(bundle.features)
    rate = bundle.features.sample_rate_hz
    stride_frames = max(1, int(round(args.stride_ms / bundle.features.hop_ms)))
    rng = np.random.default_rng(0)

    validation = [line.strip() for line in (args.speech_commands / "validation_list.txt").read_text().splitlines()
                  if line.strip()]
    positives = []  # (keyword, probabilities, times)
    for keyword in bundle.keywords:
        clips = [c for c in validation if c.split("/")[0] == keyword]
        if args.max_clips:
            clips = clips[: args.max_clips]
        for relative in clips:
            audio = read_audio(args.speech_commands / relative, rate)
            pad = np.zeros(int(PAD_S * rate), np.float32)
            stream = np.concatenate([pad, audio, pad])
            stream += (0.003 * rng.standard_normal(stream.size)).astype(np.float32)
            positives.append((keyword, *score_stream(bundle, classifier, mfcc, stream, stride_frames)))

    negatives, hours = [], 0.0
    with open(args.librispeech / "INDEX.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["keywords_in_transcript"].strip():
                continue
            audio = read_audio(args.librispeech / row["path"], rate)
            hours += audio.size / rate / 3600
            negatives.append(score_stream(bundle, classifier, mfcc, audio, stride_frames))

    print(f"model {bundle.name}: {len(positives)} validation keyword clips, {hours:.2f} h of keyword-free LibriSpeech, "
          f"stride {args.stride_ms:g} ms, refractory {args.refractory_s:g} s")
    print(f"{'threshold':>9} {'smoothing_s':>11} {'hit rate':>8} {'wrong kw':>8} {'FA/hour':>8}  per-keyword hit rate")
    for smoothing in args.smoothing:
        for threshold in args.thresholds:
            settings = DetectorSettings(thresholds={k: threshold for k in bundle.keywords}, stride_ms=args.stride_ms,
                                        smoothing_s=smoothing, refractory_s=args.refractory_s)
            hits, wrong, per = 0, 0, {k: [0, 0] for k in bundle.keywords}
            for keyword, probabilities, times in positives:
                fired = replay(bundle, settings, probabilities, times)
                hit = keyword in fired
                hits += hit
                wrong += sum(k != keyword for k in fired)
                per[keyword][0] += hit
                per[keyword][1] += 1
            false_accepts = sum(len(replay(bundle, settings, p, t)) for p, t in negatives)
            detail = " ".join(f"{k} {h / n:.2f}" for k, (h, n) in per.items() if n)
            print(f"{threshold:9.2f} {smoothing:11.2f} {hits / len(positives):8.3f} {wrong:8d} "
                  f"{false_accepts / hours:8.1f}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
