#!/usr/bin/env python3
"""Custom wake word: false rejects on held-out recordings at 0.5 false accepts per hour, from N training clips.

    python scripts/benchmark_wakeword.py ../shared/data/wakewords/computer --count 50 --seed 0 \\
        --speech-commands ../shared/data/speech_commands --negatives ../shared/data/librispeech_dev_clean_part \\
        --noise ../shared/data/household_noise [--run-dir runs/bench-computer] [--epochs N] [--synth N] \\
        [--near-misses N] [--base RUN]

Reproduces the headline figure of ``kws-train custom`` for any folder of recordings of
one word (the folder's name is the word unless ``--word``):

* ``--count`` clips (default 50), chosen with ``--seed``, are what a user would record:
  they are linked into ``RUN/samples`` and given to the custom pipeline as its samples.
  The pipeline keeps its own default holdout (``[custom] holdout``, 0.2: 10 of 50) inside
  them, for the model card's own figures; so the model trains on 40 of the 50, exactly
  as it would for a user with 50 recordings. Every other clip of the folder is a
  held-out positive here, never seen by the pipeline.
* The pipeline runs in-process (``training.custom.run_custom``, with the settings
  ``kws-train custom`` would build from the same options), so the bundle is the one
  ``kws-train custom`` makes; it is written to ``RUN/models``, never to ``models/``.
* Evaluation is ``training.stream_eval``'s: the held-out positives clean and at 20/10/5/0
  dB SNR with the ``--noise`` recordings; the negatives are the pipeline's own
  held-out LibriSpeech speakers (never trained on) plus the noise files, exactly the
  negatives its calibration used. So the threshold found here for 0.5 FA/h matches the
  bundle's calibrated threshold; the two columns differ only if they do not.

Prints a markdown table (FRR per condition at both thresholds), the FA/h measured, the
hours of negatives, the held-out clips missed clean and the training time with the
pipeline's stage breakdown. With ``--run-dir`` the run is kept there, with ``det.png`` (the
DET curve of the held-out clips against the held-out negatives) and ``benchmark.json`` (the
figures, and the clips missed in each condition at the 0.5 FA/h threshold); without it
the run goes to a temporary folder that is removed at the end.
Bad input (a missing folder, fewer than ``--count`` + 5 clips) stops with one line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROGRAM = "benchmark_wakeword"
EXTRA_HELD_OUT = 5
"""The folder must hold at least --count + this many clips (held-out positives)."""


def parse_args(argv=None) -> argparse.Namespace:
    from training.custom import DEFAULT_TRAIN

    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of recordings of one word (its name is the word)")
    parser.add_argument("--word", help="the word (default: the folder's name)")
    parser.add_argument("--count", type=int, default=50, help="training recordings to pick (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the pick and the pipeline (default 0)")
    parser.add_argument("--speech-commands", type=Path, metavar="ROOT")
    parser.add_argument("--negatives", type=Path, nargs="+", action="extend", metavar="PATH")
    parser.add_argument("--noise", type=Path, nargs="+", action="extend", metavar="DIR", required=True,
                        help="noise folders: SNR conditions, training noise and calibration negatives")
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--epochs", type=int,
                        help=f"training epochs before mining (default: kws-train custom's, {DEFAULT_TRAIN['epochs']})")
    parser.add_argument("--clips-per-class", type=int,
                        help=f"examples per class per epoch (default {DEFAULT_TRAIN['clips_per_class']})")
    parser.add_argument("--synth", type=int, default=0, metavar="N", help="synthetic clips of the word (TTS)")
    parser.add_argument("--near-misses", type=int, default=0, metavar="N", help="TTS clips per near-miss text")
    parser.add_argument("--engines", nargs="+", help="TTS engines (default: all installed)")
    parser.add_argument("--hard-negative-epochs", type=int, metavar="N",
                        help="epochs of each mining round (default: kws-train custom's, 5)")
    parser.add_argument("--base", help="transfer base, as kws-train custom's --base (default: its default; "
                        "'none' = from scratch)")
    parser.add_argument("--target-fa-per-hour", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, help="cache of decoded Speech Commands clips")
    parser.add_argument("--config", type=Path, help="TOML with [custom], [train], [augment] (as kws-train custom)")
    parser.add_argument("--smoothing-s", type=float, help="score averaging span calibrated for (default: kws-train "
                        "custom's, 1.2)")
    parser.add_argument("--bundle", type=Path, help="measure this kws-train custom bundle instead of training one: "
                        "--count and --seed must be the ones it was made with; a copy in RUN/models is calibrated "
                        "again (at --smoothing-s) on its own held-out negatives")
    return parser.parse_args(argv)


def pick_clips(folder: Path, count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training, held out): ``count`` clips chosen with ``seed``, and all the others; sorted."""
    from kws.errors import ConfigError
    from training.data import AUDIO_SUFFIXES

    if not folder.is_dir():
        raise ConfigError(f"word folder {folder} not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if count < 5:
        raise ConfigError(f"--count {count}: give at least 5 (kws-train custom needs 5 clips)")
    if len(files) < count + EXTRA_HELD_OUT:
        raise ConfigError(f"word folder {folder} holds {len(files)} audio clip(s); --count {count} needs at least "
                          f"{count + EXTRA_HELD_OUT} (the rest are the held-out positives)")
    order = np.random.default_rng([seed, 17]).permutation(len(files))
    chosen = set(order[:count].tolist())
    return ([f for i, f in enumerate(files) if i in chosen], [f for i, f in enumerate(files) if i not in chosen])


def custom_settings(args: argparse.Namespace, run_dir: Path, samples: Path, word: str):
    """``CustomSettings`` and ``TrainSettings`` exactly as ``kws-train custom`` builds them from these options."""
    from training.cli import _custom_settings, build_parser

    argv = ["custom", str(run_dir), "--word", word, "--samples", str(samples), "--seed", str(args.seed),
            "--noise", *map(str, args.noise), "--synth", str(args.synth), "--near-misses", str(args.near_misses),
            "--target-fa-per-hour", str(args.target_fa_per_hour), "--out", str(run_dir / "models")]
    for option, value in (("--speech-commands", args.speech_commands), ("--epochs", args.epochs),
                          ("--smoothing-s", args.smoothing_s),
                          ("--clips-per-class", args.clips_per_class), ("--base", args.base),
                          ("--cache", args.cache), ("--hard-negative-epochs", args.hard_negative_epochs),
                          ("--config", args.config)):
        if value is not None:
            argv += [option, str(value)]
    if args.negatives:
        argv += ["--negatives", *map(str, args.negatives)]
    if args.engines:
        argv += ["--engines", *args.engines]
    return _custom_settings(build_parser().parse_args(argv))


def recalibrate(args: argparse.Namespace, run_dir: Path, samples: Path) -> dict:
    """The figures of ``run_custom`` for an existing bundle: a copy in ``RUN/models``, calibrated again.

    The pipeline's settings come from the bundle's training record, with the samples, output folder and
    smoothing span of this run; its split is made again from them (the same seed gives the same held-out
    speakers and clips), and checked against the bundle's calibration record."""
    import dataclasses

    from kws.bundle import load_bundle
    from kws.errors import ConfigError
    from training import custom
    from training.train import TrainSettings

    bundle = load_bundle(args.bundle)
    record = bundle.training.get("custom")
    if not record:
        raise ConfigError(f"{bundle.json_path} has no kws-train custom training record: give a bundle that "
                          "kws-train custom made, or leave out --bundle to train one")
    settings = dataclasses.replace(custom.CustomSettings.from_dict(record), samples_dir=samples,
                                   out_dir=run_dir / "models")
    if args.smoothing_s is not None:
        settings = dataclasses.replace(settings, smoothing_s=args.smoothing_s)
    inputs = custom.gather_inputs(settings, bundle.features)
    before = bundle.calibration.get("positives", {}).get("clips")
    if before is not None and before != len(inputs.positives_holdout):
        raise ConfigError(f"--count {args.count} --seed {args.seed} hold out {len(inputs.positives_holdout)} clips; "
                          f"{bundle.name} was calibrated with {before}: give the --count and --seed it was made with")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    copy = settings.out_dir / bundle.json_path.name
    shutil.copyfile(bundle.json_path, copy)
    shutil.copyfile(bundle.tflite_path, settings.out_dir / bundle.tflite_path.name)
    custom.save_settings(run_dir, settings, TrainSettings.from_dict(bundle.training.get("settings", {})), inputs)
    calibration = custom.calibrate(copy, settings, inputs)
    return {"bundle": str(copy), "train_s": 0.0, "epochs": 0, "examples": {}, "calibration": calibration,
            "recalibrated": str(args.bundle)}


def evaluate(bundle_path: Path, run_dir: Path, held_out: list[Path], noise_folders, seed: int, target: float):
    """Held-out positives (clean + SNRs) and the pipeline's held-out negatives through ``stream_eval``."""
    from kws.bundle import load_bundle
    from kws.spotter import detector_settings_for
    from training import stream_eval as se

    split = json.loads((run_dir / "settings.json").read_text())["split"]
    bundle = load_bundle(bundle_path)
    word = bundle.keywords[0]
    scorer = se.StreamScorer(bundle)
    settings = se.StreamEvalSettings(seed=seed)  # clean + 20/10/5/0 dB
    noise = se.load_noise(noise_folders, scorer.sample_rate_hz)
    positives = se.score_positives(scorer, held_out, word, settings, noise, "held-out clips")
    speech = [Path(p) for p in split["negatives_calibration"]]
    noise_files = [Path(p) for p in split["noise_files"]]
    listing = se.NegativeFiles(tuple(speech + noise_files),
                               (f"{len(speech)} held-out speech file(s)", f"{len(noise_files)} noise file(s)"), 0)
    negatives = se.score_negatives(scorer, listing)
    replayer = se.Replayer(bundle, detector_settings_for(bundle), negatives, positives)
    rate = se.threshold_for_rate(replayer, target, replayer.candidate_thresholds(settings.grid()))
    at_rate = replayer.point(replayer.at(rate.threshold))
    calibrated = bundle.thresholds[word]
    at_calibrated = replayer.point(replayer.at(calibrated))
    speech_names = {str(p) for p in speech}
    speech_hours = sum(s.duration_s for s in negatives.streams if s.name in speech_names) / 3600
    return {"replayer": replayer, "settings": settings,
            "rate": rate, "at_rate": at_rate, "calibrated": calibrated, "at_calibrated": at_calibrated,
            "conditions": settings.conditions, "positives": positives.clips, "hours": negatives.hours,
            "speech_hours": speech_hours, "skipped": len(positives.skipped) + len(negatives.skipped),
            "highest": replayer.highest_negatives(3)}


def report(word: str, count: int, seed: int, result: dict, figures: dict, wall_s: float, stages: dict) -> str:
    from training.stream_eval import CLEAN

    rate, at_rate, at_cal = result["rate"], result["at_rate"], result["at_calibrated"]
    held = (figures.get("calibration") or {}).get("positives", {}).get("clips", 0)
    kept = f"{held} of the {count} clips held out by the pipeline for its model card"
    if figures.get("recalibrated"):
        made = f"- no training: {figures['recalibrated']} calibrated again in {wall_s:.0f} s ({kept})"
    else:
        made = (f"- training: {wall_s:.0f} s wall for the whole pipeline ({figures['train_s']:.0f} s fitting, "
                f"{figures['epochs']} epochs; {kept})")
    lines = [
        f"## Wake word '{word}': {count} training recordings (seed {seed}), "
        f"{result['positives']} held-out recordings",
        "",
        f"| condition | FRR @ {rate.target_fa_per_hour:g} FA/h (threshold {rate.threshold:g}) "
        f"| FRR @ calibrated threshold {result['calibrated']:g} |",
        "|---|---|---|",
        *[f"| {c} | {at_rate.frr[c]:.1%} | {at_cal.frr[c]:.1%} |" for c in result["conditions"]],
        "",
        f"- false accepts: {rate.false_accepts} in {result['hours']:.2f} h of held-out negatives "
        f"({result['speech_hours']:.2f} h speech of speakers never trained on, the rest noise) = "
        f"{rate.fa_per_hour:.2f}/h at threshold {rate.threshold:g}; at the calibrated threshold "
        f"{at_cal.false_accepts} = {at_cal.fa_per_hour:.2f}/h",
        f"- target {rate.target_fa_per_hour:g} FA/h reachable: {'yes' if rate.target_met else 'NO (best threshold shown)'}"
        f" (one false accept = {rate.one_false_accept_per_hour:.2f}/h)",
        made,
        "- highest-scoring moments of the negatives (what sets the threshold): "
        + "; ".join(moment.describe() for moment in result["highest"]),
        f"- missed at {rate.target_fa_per_hour:g} FA/h, clean: "
        + (", ".join(Path(name).name for name in at_rate.missed[CLEAN]) or "none"),
    ]
    if stages:
        lines.append("- stages (the prefetch stage overlaps fit): " + ", ".join(f"{name} {secs:.0f} s" for name, secs in
                                              sorted(stages.items(), key=lambda kv: -kv[1])))
    if result["skipped"]:
        lines.append(f"- {result['skipped']} unreadable file(s) skipped")
    return "\n".join(lines)


def save_results(run_dir: Path, word: str, args: argparse.Namespace, result: dict, figures: dict,
                 wall_s: float) -> None:
    """``RUN/benchmark.json`` (the figures) and ``RUN/det.png`` (false rejects against false accepts per hour)."""
    from kws.bundle import atomic_write
    from training import stream_eval as se

    replayer, rate = result["replayer"], result["rate"]
    sweep = replayer.sweep(replayer.usable(result["settings"].det_grid()))
    se.save_det(replayer, sweep, {f"calibrated {result['calibrated']:g}": result["at_calibrated"]},
                f"'{word}': {args.count} training recordings, {result['positives']} held out",
                run_dir / "det.png", args.target_fa_per_hour)
    body = {"word": word, "count": args.count, "seed": args.seed, "held_out_positives": result["positives"],
            "negative_hours": round(result["hours"], 4), "speech_hours": round(result["speech_hours"], 4),
            "at_target": {**rate.to_dict(), **result["at_rate"].to_dict()},
            "at_calibrated": result["at_calibrated"].to_dict(), "wall_s": round(wall_s, 1),
            "train_s": figures["train_s"], "examples": figures["examples"],
            "highest_negatives": [moment.to_dict() for moment in result["highest"]],
            "missed_at_target": dict(result["at_rate"].missed),
            "det": [p.to_dict() for p in sweep]}
    atomic_write(run_dir / "benchmark.json", (json.dumps(body, indent=1) + "\n").encode())
    print(f"\nwrote {run_dir / 'det.png'} and {run_dir / 'benchmark.json'}")


def main(argv=None) -> int:
    from kws.cli_common import configure_logging
    from kws.errors import KwsError

    args = parse_args(argv)
    configure_logging(0)
    temporary = None
    try:
        training_clips, held_out = pick_clips(args.folder, args.count, args.seed)
        word = args.word or args.folder.resolve().name
        if args.run_dir is None:
            temporary = Path(tempfile.mkdtemp(prefix=f"bench-{word}-"))
        run_dir = args.run_dir or temporary
        samples = run_dir / "samples"
        if samples.exists():
            shutil.rmtree(samples)
        samples.mkdir(parents=True)
        for path in training_clips:
            (samples / path.name).symlink_to(path.resolve())

        from training.custom import run_custom
        from training.timing import StageTimer

        timer = StageTimer()
        started = time.perf_counter()
        if args.bundle is not None:
            figures = recalibrate(args, run_dir, samples)
        else:
            settings, train_settings = custom_settings(args, run_dir, samples, word)
            figures = run_custom(run_dir, settings, train_settings, timer)
        wall_s = time.perf_counter() - started
        stages = dict(timer.seconds)
        result = evaluate(Path(figures["bundle"]), run_dir, held_out, args.noise, args.seed, args.target_fa_per_hour)
        print()
        print(report(word, args.count, args.seed, result, figures, wall_s, stages))
        if args.run_dir is not None:
            save_results(args.run_dir, word, args, result, figures, wall_s)
    except KwsError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
