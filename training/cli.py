"""``kws-train``: synthesize, train, quantize, evaluate and export models."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

from kws.cli_common import configure_logging, load_toml
from kws.errors import KwsError
from training.timing import StageTimer

_LOGGER = logging.getLogger(__name__)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="Speech Commands folder (official layout)")
    p.add_argument("--extra", type=Path, action="append", default=None,
                   help="extra <word>/* folder for the training split, e.g. synthetic speech (repeatable)")
    p.add_argument("--noise", type=Path, action="append", default=None,
                   help="extra folder of noise recordings for augmentation (repeatable)")
    p.add_argument("--rir", type=Path, action="append", default=None,
                   help="folder of room impulse responses for the reverb augmentation (repeatable)")
    p.add_argument("--cache", type=Path, default=None, help="folder for decoded-audio caches (default: none)")
    p.add_argument("--config", type=Path, help="TOML file with [data], [train], [features] and [augment] tables")
    p.add_argument("--architecture", help="model architecture: ds-cnn-s, ds-cnn-m or ds-cnn-l")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--clips-per-class", type=int, help="examples per class per epoch (0 = mean keyword count)")
    p.add_argument("--seed", type=int)
    p.add_argument("--teacher", help="distil from a teacher: a name (mlperf, arm-s/m/l, attention-rnn, "
                   "attention-rnn-global), run:PATH, or a comma-separated ensemble")
    p.add_argument("--temperature", type=float, help="distillation temperature (default 2)")
    p.add_argument("--hard-weight", type=float, help="weight of the true-label loss (default 0.5)")
    p.add_argument("--soft-weight", type=float, help="weight of the teacher loss (default 0.5)")
    p.add_argument("--cached-epochs", type=int, help="distinct augmented epochs with cached teacher targets (default 20)")
    p.add_argument("--label-only", nargs="+", metavar="CLASS",
                   help="classes whose examples take their label, not the teacher's target (e.g. _silence_)")


def _settings(args: argparse.Namespace):
    from kws.features import FeatureSettings
    from training import data
    from training.augment import AugmentSettings
    from training.distill import DistillSettings
    from training.run import DataSettings
    from training.train import TrainSettings

    config = load_toml(args.config) if args.config else {}
    unknown = set(config) - {"data", "train", "features", "augment", "distill"}
    if unknown:
        raise KwsError(f"{args.config}: unknown table(s) {', '.join(sorted(unknown))}; "
                       "expected data, train, features, augment, distill")
    train_values = dict(config.get("train", {}))
    for option in ("architecture", "epochs", "batch_size", "learning_rate", "clips_per_class", "seed"):
        value = getattr(args, option)
        if value is not None:
            train_values[option] = value
    distill_values = dict(config.get("distill", {}))
    for option in ("teacher", "temperature", "hard_weight", "soft_weight", "cached_epochs", "label_only"):
        value = getattr(args, option, None)
        if value is not None:
            distill_values[option] = value
    strangers = [c for c in distill_values.get("label_only", ()) if c not in data.LABELS]
    if strangers:
        raise KwsError(f"distill label_only: no class {', '.join(strangers)}; the classes are {', '.join(data.LABELS)}")
    try:
        train_values["features"] = FeatureSettings(**config.get("features", {}))
        train_values["augment"] = AugmentSettings(**config.get("augment", {}))
        train_values["distill"] = DistillSettings(**distill_values)
        train_settings = TrainSettings(**train_values)
    except (TypeError, ValueError) as error:
        raise KwsError(f"{args.config}: {error}") from None
    data_values = config.get("data", {})
    root = args.data or data_values.get("root")
    if root is None:
        raise KwsError("no data set given: pass --data PATH (a Speech Commands folder) or set [data] root in --config")
    extra = args.extra if args.extra is not None else data_values.get("extra", [])
    cache = args.cache or data_values.get("cache_dir")
    noise = args.noise if args.noise is not None else data_values.get("noise", [])
    rir = args.rir if args.rir is not None else data_values.get("rir", [])
    data_settings = DataSettings(Path(root), tuple(Path(p) for p in extra), Path(cache) if cache else None,
                                 tuple(Path(p) for p in noise), tuple(Path(p) for p in rir))
    from training.models import REGISTRY

    if train_settings.architecture not in REGISTRY:
        raise KwsError(f"unknown architecture {train_settings.architecture!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return train_settings, data_settings


def cmd_train(args, timer) -> None:
    from training.run import Run, step_train

    step_train(Run(args.run), *_settings(args), timer)


def cmd_quantize(args, timer) -> None:
    from training.run import Run, step_quantize

    step_quantize(Run(args.run), timer, args.representative)


def cmd_evaluate(args, timer) -> None:
    from training.run import Run, step_evaluate

    step_evaluate(Run(args.run), args.test, timer)


def cmd_export(args, timer) -> None:
    from training.run import Run, step_export

    path = step_export(Run(args.run), args.name, args.out, args.threshold)
    print(path)


def cmd_all(args, timer) -> None:
    from training.run import Run, step_evaluate, step_export, step_quantize, step_train

    run = Run(args.run)
    step_train(run, *_settings(args), timer)
    step_quantize(run, timer, args.representative)
    step_evaluate(run, args.test, timer)
    print(step_export(run, args.name, args.out, args.threshold))


def cmd_teachers(args, timer) -> None:
    """Each teacher (and the ensemble of all named) alone on the validation split and test folders."""
    import time

    import numpy as np

    from training import data
    from training.evaluate import report, score
    from training.teachers import Ensemble, load_teacher
    from training.train import EpochMaker, load_corpus

    train_settings, data_settings = _settings(args)
    corpus = load_corpus(data_settings, timer)
    sets = {"validation": EpochMaker(corpus, train_settings).validation_audio()}
    for folder in args.test:
        sets[folder.name] = data.load_test_folder(folder, data_settings.cache_dir)
    teachers = [load_teacher(name) for name in args.names]
    if len(teachers) > 1:
        teachers.append(Ensemble(teachers))
    for teacher in teachers:
        for name, (audio, truth) in sets.items():
            start = time.perf_counter()
            with timer.stage(f"teacher {teacher.name}"):
                predicted = teacher.predict(audio).argmax(axis=1)
            per_clip_ms = 1000 * (time.perf_counter() - start) / len(audio)
            print(report(f"{teacher.name} on {name} ({per_clip_ms:.1f} ms/clip)", score(data.LABELS, truth, predicted)))


def cmd_mine(args, timer) -> None:
    from training.mine import MineSettings, mine
    from training.teachers import load_teacher

    try:
        settings = MineSettings(corpus=args.corpus, out_dir=args.out, words=tuple(args.words),
                                min_probability=args.min_probability)
    except ValueError as error:
        raise KwsError(str(error)) from None
    teacher = load_teacher(args.teacher)
    with timer.stage("mine"):
        result = mine(settings, teacher)
    print(f"{len(result.paths)} clips in {args.out} (list: {args.out / 'MINED.csv'})")


def cmd_synth(args, timer) -> None:
    from training.synth import SynthSettings, synthesize

    try:
        settings = SynthSettings(words=tuple(args.words), out_dir=args.out, clips_per_word=args.clips_per_word,
                                 seed=args.seed, **({"engines": tuple(args.engines)} if args.engines else {}))
    except ValueError as error:
        raise KwsError(str(error)) from None
    with timer.stage("synthesize"):
        paths = synthesize(settings)
    print(f"{len(paths)} clips in {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a float model into a run folder")
    p.add_argument("run", type=Path, help="run folder to create")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quantize", help="int8-quantize a run's model to .tflite")
    p.add_argument("run", type=Path)
    p.add_argument("--representative", type=int, default=500, help="number of training windows for calibration")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy of float and int8 on the validation split and test folders")
    p.add_argument("run", type=Path)
    p.add_argument("--test", type=Path, action="append", default=[], help="test folder in <label>/* layout (repeatable)")
    p.set_defaults(func=cmd_evaluate)

    for name, func, helptext in (("export", cmd_export, "write a model bundle (.tflite + .json)"),
                                 ("all", cmd_all, "train, quantize, evaluate and export in one go")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run", type=Path)
        if name == "all":
            _add_train_options(p)
            p.add_argument("--representative", type=int, default=500)
            p.add_argument("--test", type=Path, action="append", default=[])
        p.add_argument("--name", default="kws12", help="bundle name (default kws12)")
        p.add_argument("--out", type=Path, default=Path("models"), help="folder for the bundle (default models/)")
        p.add_argument("--threshold", type=float, default=0.7, help="default detection threshold per keyword")
        p.set_defaults(func=func)

    p = sub.add_parser("teachers", help="measure teachers (and their ensemble) on the validation split")
    p.add_argument("names", nargs="+", help="teacher names or run:PATH")
    _add_train_options(p)
    p.add_argument("--test", type=Path, action="append", default=[], help="also measure on this test folder")
    p.set_defaults(func=cmd_teachers)

    p = sub.add_parser("mine", help="find real keyword clips in transcribed speech with a teacher")
    p.add_argument("corpus", type=Path, help="folder with INDEX.csv (path, transcript, keywords_in_transcript)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--words", nargs="+", default=["on", "off"])
    p.add_argument("--teacher", default="mlperf,arm-l,attention-rnn-global")
    p.add_argument("--min-probability", type=float, default=0.3,
                   help="keep a window only if the teacher gives the word at least this (default 0.3)")
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("synth", help="render words with the installed TTS engines into <out>/<word>/*.wav")
    p.add_argument("words", nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clips-per-word", type=int, default=400)
    p.add_argument("--engines", nargs="+", help="subset of espeak-ng flite festival piper")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    timer = StageTimer()
    try:
        args.func(args, timer)
    except KwsError as error:
        print(f"kws-train: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kws-train: interrupted", file=sys.stderr)
        return 130
    if timer.seconds:
        print(timer.report(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
