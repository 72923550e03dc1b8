#!/usr/bin/env python3
"""Streaming detection: hit rate on keyword clips and false accepts per hour on other speech.

    python scripts/benchmark_detection.py --speech-commands ../shared/data/speech_commands \\
        --librispeech ../shared/data/librispeech_dev_clean_part [--model kws12] \\
        [--thresholds 0.5 0.6 0.7] [--smoothing 0 0.2 0.3]

Positives: every keyword clip of the Speech Commands validation split, alone in
1.5 s of quiet noise before and after, streamed through the model as ``kws
detect`` would; a hit is a detection of the right keyword (any other keyword
counts as a false accept). Negatives: LibriSpeech utterances whose transcript
holds none of the keywords, each streamed as ``kws detect`` streams a file
(with a window of silence after it); every detection there is a false accept.
The model's scores are computed once per stream (one inference every stride)
and each detector setting replays them, so settings compare on identical
inputs. Scoring and replay are ``training.stream_eval``'s, the code behind
``kws-train evaluate-stream`` and ``calibrate``. Use the validation split to
choose thresholds, never a test set.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from kws.audio_file import read_audio
from kws.bundle import load_bundle
from kws.detector import DetectorSettings
from training.stream_eval import PAD_S, StreamScorer, embed, negative_files, replay, score_negatives, smooth


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
    scorer = StreamScorer(bundle, args.stride_ms)
    rate = bundle.features.sample_rate_hz
    rng = np.random.default_rng(0)

    validation = [line.strip() for line in (args.speech_commands / "validation_list.txt").read_text().splitlines()
                  if line.strip()]
    positives = []  # (keyword, scored stream)
    for keyword in bundle.keywords:
        clips = [c for c in validation if c.split("/")[0] == keyword]
        if args.max_clips:
            clips = clips[: args.max_clips]
        for relative in clips:
            audio = read_audio(args.speech_commands / relative, rate)
            positives.append((keyword, scorer.score(embed(audio, int(PAD_S * rate), rng), relative)))

    negatives = score_negatives(scorer, negative_files([args.librispeech], bundle.keywords))
    hours = negatives.hours

    print(f"model {bundle.name}: {len(positives)} validation keyword clips, {hours:.2f} h of keyword-free LibriSpeech, "
          f"stride {args.stride_ms:g} ms, refractory {args.refractory_s:g} s")
    print(f"{'threshold':>9} {'smoothing_s':>11} {'hit rate':>8} {'wrong kw':>8} {'FA/hour':>8}  per-keyword hit rate")
    for smoothing in args.smoothing:
        base = DetectorSettings(thresholds={k: 0.5 for k in bundle.keywords}, stride_ms=args.stride_ms,
                                smoothing_s=smoothing, refractory_s=args.refractory_s)
        smoothed_positives = [(keyword, smooth(stream, bundle, base)) for keyword, stream in positives]
        smoothed_negatives = [smooth(stream, bundle, base) for stream in negatives.streams]
        for threshold in args.thresholds:
            settings = dataclasses.replace(base, thresholds={k: threshold for k in bundle.keywords})
            hits, wrong, per = 0, 0, {k: [0, 0] for k in bundle.keywords}
            for keyword, stream in smoothed_positives:
                fired = [d.keyword for d in replay(stream, bundle, settings)]
                hit = keyword in fired
                hits += hit
                wrong += sum(k != keyword for k in fired)
                per[keyword][0] += hit
                per[keyword][1] += 1
            false_accepts = sum(len(replay(stream, bundle, settings)) for stream in smoothed_negatives)
            detail = " ".join(f"{k} {h / n:.2f}" for k, (h, n) in per.items() if n)
            print(f"{threshold:9.2f} {smoothing:11.2f} {hits / len(positives):8.3f} {wrong:8d} "
                  f"{false_accepts / hours:8.1f}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
