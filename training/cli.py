"""``kws-train``: synthesize, train, quantize, evaluate and export models; evaluate and calibrate bundles on streams."""

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

    path = step_export(Run(args.run), args.name or args.run.resolve().name, args.out, args.threshold)
    print(path)


def cmd_all(args, timer) -> None:
    from training.run import Run, step_evaluate, step_export, step_quantize, step_train

    run = Run(args.run)
    step_train(run, *_settings(args), timer)
    step_quantize(run, timer, args.representative)
    step_evaluate(run, args.test, timer)
    print(step_export(run, args.name or args.run.resolve().name, args.out, args.threshold))


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


def _custom_settings(args):
    """``CustomSettings`` and ``TrainSettings`` from the options over ``--config`` (TOML tables [custom], [train],
    [augment], [features]; or a custom run's settings.json, to train it again)."""
    import json

    from training.custom import DEFAULT_AUGMENT, DEFAULT_TRAIN, CustomSettings, resolve_base
    from training.train import TrainSettings

    config: dict = {}
    if args.config is not None:
        if args.config.suffix == ".json":
            try:
                config = json.loads(args.config.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise KwsError(f"config file {args.config} cannot be read as JSON ({error})") from None
            if config.get("kind") != "custom":
                raise KwsError(f"{args.config} is not the settings.json of a kws-train custom run")
        else:
            config = load_toml(args.config)
            unknown = set(config) - {"custom", "train", "augment", "features"}
            if unknown:
                raise KwsError(f"{args.config}: unknown table(s) {', '.join(sorted(unknown))}; "
                               "expected custom, train, augment, features")
    custom = dict(config.get("custom", {}))
    for option, key in (("word", "word"), ("samples", "samples_dir"), ("speech_commands", "speech_commands"),
                        ("negatives", "negatives"), ("noise", "noise"), ("rir", "rir"), ("room", "room"),
                        ("synth", "synth_clips"), ("near_misses", "near_miss_clips"), ("engines", "engines"),
                        ("holdout", "holdout"), ("seed", "seed"), ("window_s", "window_s"),
                        ("hard_negative_epochs", "hard_negative_epochs"),
                        ("target_fa_per_hour", "target_fa_per_hour"), ("smoothing_s", "smoothing_s"),
                        ("name", "name"), ("out", "out_dir"),
                        ("cache", "cache_dir")):
        value = getattr(args, option)
        if value is not None:
            custom[key] = value
    for key, flag in (("word", "--word NAME"), ("samples_dir", "--samples DIR")):
        if not custom.get(key):
            raise KwsError(f"no {key.replace('_dir', '')} given: pass {flag} (or set it in [custom] of --config)")
    if args.base is not None:
        base = args.base
    elif "base" in custom:
        base = custom["base"] or "none"  # a settings.json records a run from scratch as null
    else:
        base = None
    custom["base"] = resolve_base(base)
    train_values = {**DEFAULT_TRAIN, **config.get("train", {})}
    train_values["augment"] = {**DEFAULT_AUGMENT, **train_values.get("augment", {}), **config.get("augment", {})}
    train_values["features"] = {**train_values.get("features", {}), **config.get("features", {})}
    if args.epochs is not None:
        train_values["epochs"] = args.epochs
    if args.clips_per_class is not None:
        train_values["clips_per_class"] = args.clips_per_class
    try:
        settings = CustomSettings.from_dict(custom)
        train_values["seed"] = settings.seed
        train_settings = TrainSettings.from_dict(train_values)
    except (TypeError, ValueError) as error:
        raise KwsError(f"{args.config or 'kws-train custom'}: {error}") from None
    if train_settings.distill.enabled:
        raise KwsError("kws-train custom does not distil: remove the teacher from [train] distill")
    return settings, train_settings


def cmd_custom(args, timer) -> None:
    from training.custom import run_custom

    settings, train_settings = _custom_settings(args)
    figures = run_custom(args.run, settings, train_settings, timer)
    calibration = figures["calibration"]
    print(f"threshold {calibration['threshold']:g}: {calibration['fa_per_hour']:.2f} false accepts per hour on "
          f"{calibration['negative_hours']:.2f} h of held-out negatives (target {calibration['target_fa_per_hour']:g}"
          f"{'' if calibration['target_met'] else ', NOT met'})")
    print(f"model card {args.run / (settings.bundle_name + '.md')}")
    print(figures["bundle"])


def _stream_inputs(args, need_negatives: bool):
    """Bundle, settings and every input of evaluate-stream / calibrate, checked before any audio is scored."""
    from kws.bundle import load_bundle
    from kws.spotter import detector_settings_for
    from training import stream_eval as se

    bundle = load_bundle(args.bundle)
    noise_given = bool(args.noise)
    snrs = tuple(args.snr) if args.snr is not None else (se.DEFAULT_SNRS_DB if noise_given else ())
    settings = se.StreamEvalSettings(snrs_db=snrs, seed=args.seed, max_positives=args.max_positives,
                                     stride_ms=args.stride_ms)
    detector = detector_settings_for(bundle, stride_ms=settings.stride_ms,
                                     smoothing_s=getattr(args, "smoothing_s", None),
                                     refractory_s=getattr(args, "refractory_s", None))
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0 < threshold <= 1:
        raise KwsError(f"--threshold {threshold}: must be in (0, 1]")
    if not args.target_fa_per_hour >= 0:
        raise KwsError(f"--target-fa-per-hour {args.target_fa_per_hour}: must not be negative")
    keyword = clips = None
    if args.positives is not None:
        clips = se.positive_clips(args.positives, settings.max_positives)
        keyword = se.positive_keyword(bundle, args.positives, args.keyword)
        if snrs and not noise_given:
            raise KwsError("the SNR conditions need background noise: pass --noise DIR (e.g. household recordings), "
                           "or --snr without values for the clean condition only")
    listing = se.negative_files(args.negatives, bundle.keywords) if args.negatives else None
    if need_negatives and listing is None:
        raise KwsError("calibration needs negative audio: pass --negatives PATH (files or folders)")
    noise = se.load_noise(args.noise, bundle.features.sample_rate_hz) if clips and snrs else None
    if clips and not snrs:
        _LOGGER.info("no --noise: positives are measured clean only")
    return bundle, settings, detector, keyword, clips, listing, noise


def _score(args, timer, bundle, settings, detector, keyword, clips, listing, noise):
    from training import stream_eval as se

    scorer = se.StreamScorer(bundle, settings.stride_ms)
    positives = negatives = None
    if clips:
        with timer.stage("score positives"):
            positives = se.score_positives(scorer, clips, keyword, settings, noise, str(args.positives))
    if listing is not None:
        with timer.stage("score negatives"):
            negatives = se.score_negatives(scorer, listing)
    with timer.stage("smooth"):
        replayer = se.Replayer(bundle, detector, negatives, positives)
    return replayer


def _describe_inputs(bundle, replayer) -> None:
    from training import stream_eval as se

    print(f"model {bundle.name} ({bundle.json_path}); detector {se.describe_detector(replayer.settings)}")
    positives, negatives = replayer.positives, replayer.negatives
    if positives is not None:
        noise = f"; noise from {', '.join(positives.noise)}" if positives.noise else ""
        print(f"positives: {positives.clips} clip(s) of '{positives.keyword}' from {positives.source}, each between "
              f"{se.PAD_S:g} s of background; conditions {', '.join(positives.streams)}{noise}")
        for line in positives.skipped:
            print(f"  skipped (unreadable): {line}")
    if negatives is not None:
        left_out = f", {negatives.excluded} utterance(s) left out for a keyword in the transcript" if negatives.excluded else ""
        print(f"negatives: {negatives.hours:.3f} h in {len(negatives.streams)} file(s) from "
              f"{', '.join(negatives.sources)}{left_out}; one false accept = {1 / negatives.hours:.2f} per hour")
        for line in negatives.skipped:
            print(f"  skipped (unreadable): {line}")


def cmd_evaluate_stream(args, timer) -> None:
    import json

    from kws.bundle import atomic_write
    from training import stream_eval as se

    inputs = _stream_inputs(args, need_negatives=False)
    bundle, settings = inputs[0], inputs[1]
    if args.positives is None and not args.negatives:
        raise KwsError("nothing to evaluate: pass --positives DIR and/or --negatives PATH")
    out = args.out if args.out is not None else Path(f"stream_eval_{bundle.name}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KwsError(f"output folder {out} cannot be created: {error.strerror}") from None
    replayer = _score(args, timer, *inputs)
    with timer.stage("replay"):
        own = replayer.point(replayer.settings if args.threshold is None else replayer.at(args.threshold))
        rows = [(se.threshold_label(own, "bundle" if args.threshold is None else "--threshold"), own)]
        rate = None
        if replayer.negatives is not None:
            rate = se.threshold_for_rate(replayer, args.target_fa_per_hour,
                                         replayer.candidate_thresholds(settings.grid()))
            what = (f"<= {rate.target_fa_per_hour:g} FA/h" if rate.target_met
                    else f"best; {rate.target_fa_per_hour:g} FA/h not met")
            rows.append((f"{rate.threshold:g} ({what})", replayer.point(replayer.at(rate.threshold))))
        sweep = replayer.sweep(replayer.usable(settings.det_grid()))
    conditions = list(replayer.positives.streams) if replayer.positives else []
    highest = replayer.highest_negatives()
    _describe_inputs(bundle, replayer)
    print(se.table(rows, conditions))
    for line in se.describe_highest(highest, own.threshold):
        print(line)
    written = []
    if replayer.negatives is not None and conditions:
        with timer.stage("plot"):
            title = (f"{bundle.name}: '{replayer.positives.keyword}' x {replayer.positives.clips} clips, "
                     f"{replayer.negatives.hours:.2f} h of negatives; {se.describe_detector(replayer.settings)}")
            se.save_det(replayer, sweep, {label: point for label, point in rows}, title, out / "det.png",
                        args.target_fa_per_hour)
        written.append(out / "det.png")
    elif replayer.negatives is None:
        _LOGGER.info("no --negatives: no false accepts per hour and no DET curve")
    figures = {
        "model": bundle.name, "manifest": str(bundle.json_path),
        "detector": {"stride_ms": replayer.settings.stride_ms, "smoothing_s": replayer.settings.smoothing_s,
                     "refractory_s": replayer.settings.refractory_s},
        "settings": {"snrs_db": list(settings.snrs_db), "pad_s": settings.pad_s, "floor_rms": settings.floor_rms,
                     "seed": settings.seed, "max_positives": settings.max_positives},
        "positives": replayer.positives.to_dict() if replayer.positives else None,
        "negatives": replayer.negatives.to_dict() if replayer.negatives else None,
        "at_thresholds": rows[0][1].to_dict(),
        "for_target": None if rate is None else {**rate.to_dict(), "frr": rows[1][1].to_dict()["frr"],
                                                 "wrong_keyword": dict(rows[1][1].wrong_keyword)},
        "highest_negatives": [moment.to_dict() for moment in highest],
        "sweep": [p.to_dict() for p in sweep],
    }
    atomic_write(out / "stream_eval.json", (json.dumps(figures, indent=1) + "\n").encode())
    written.append(out / "stream_eval.json")
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_calibrate(args, timer) -> None:
    from training import stream_eval as se

    inputs = _stream_inputs(args, need_negatives=True)
    bundle, settings = inputs[0], inputs[1]
    replayer = _score(args, timer, *inputs)
    with timer.stage("replay"):
        rate = se.threshold_for_rate(replayer, args.target_fa_per_hour, replayer.candidate_thresholds(settings.grid()))
    if not rate.target_met:
        raise KwsError(f"no threshold up to {rate.threshold:g} gives at most {rate.target_fa_per_hour:g} false accepts "
                       f"per hour on {rate.negative_hours:.2f} h of negatives (best: {rate.fa_per_hour:.2f}/h); "
                       f"{bundle.json_path} is unchanged: raise --target-fa-per-hour or train with these negatives")
    point = replayer.point(replayer.at(rate.threshold)) if replayer.positives else None
    highest = replayer.highest_negatives()
    se.write_calibration(bundle, rate, replayer.settings, replayer.negatives, replayer.positives, point, highest)
    _describe_inputs(bundle, replayer)
    if rate.target_fa_per_hour < rate.one_false_accept_per_hour:
        print(f"note: one false accept in {rate.negative_hours:.2f} h is {rate.one_false_accept_per_hour:.2f}/h, above "
              f"the target: the threshold allows none here; more negative audio gives a finer estimate")
    print(f"threshold {rate.threshold:g} for every keyword: {rate.false_accepts} false accept(s) = "
          f"{rate.fa_per_hour:.2f} per hour (target {rate.target_fa_per_hour:g}; {rate.thresholds_tried} thresholds tried)")
    if point is not None:
        print(se.table([(f"{rate.threshold:g}", point)], list(point.frr)))
    for line in se.describe_highest(highest, rate.threshold):
        print(line)
    print(f"wrote the threshold and a calibration record into {bundle.json_path}")


def _add_stream_options(p: argparse.ArgumentParser, negatives_required: bool) -> None:
    p.add_argument("bundle", help="bundle name in models/ or path to its .json")
    p.add_argument("--negatives", type=Path, nargs="+", action="extend", required=negatives_required,
                   metavar="PATH", help="audio files or folders without the keywords (a folder with INDEX.csv, or "
                   "LibriSpeech's *.trans.txt: only utterances whose transcript has no keyword); unreadable files are "
                   "reported and skipped")
    p.add_argument("--positives", type=Path, metavar="DIR",
                   help="folder of clips of one keyword")
    p.add_argument("--keyword", help="the keyword the positives say (default: the folder's name, or the only keyword)")
    p.add_argument("--noise", type=Path, nargs="+", action="extend", metavar="DIR",
                   help="folders of background noise for the SNR conditions")
    p.add_argument("--snr", type=float, nargs="*", metavar="DB",
                   help="SNRs of the noisy conditions besides clean (default 20 10 5 0 with --noise)")
    p.add_argument("--max-positives", type=int, default=0, help="use at most this many clips, spread evenly (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="chooses the noise stretches (default 0)")
    p.add_argument("--stride-ms", type=float, default=100.0, help="audio between inferences (default 100)")
    p.add_argument("--target-fa-per-hour", type=float, default=0.5,
                   help="false accepts per hour allowed on the negatives (default 0.5)")
    p.add_argument("--smoothing-s", type=float, help="span of score averaging (default: the bundle's; calibrate "
                   "writes it into the bundle with the threshold)")


def build_parser() -> argparse.ArgumentParser:
    from training.custom import DEFAULT_TRAIN  # cheap (no TensorFlow); the help states its defaults

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
        p.add_argument("--name", help="bundle name (default: the run folder's name, so the bundled kws12 is only "
                       "replaced on purpose)")
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

    p = sub.add_parser("custom", help="train a wake-word bundle for your own word from your recordings "
                       "(kws record), quantize, calibrate and export it")
    p.add_argument("run", type=Path, help="run folder to create")
    p.add_argument("--word", help="the wake word (the bundle's keyword; a phrase as hey_pi)")
    p.add_argument("--samples", type=Path, metavar="DIR", help="folder of your clips of the word (kws record output)")
    p.add_argument("--speech-commands", type=Path, metavar="ROOT",
                   help="Speech Commands folder: its words as _unknown_, its _background_noise_ as noise")
    p.add_argument("--negatives", type=Path, nargs="+", action="extend", metavar="PATH",
                   help="speech without the word (files or folders; a folder of speaker folders as LibriSpeech, whose "
                   "INDEX.csv or *.trans.txt transcripts leave out the utterances that say the word): "
                   "windows for training, speakers held out for calibration")
    p.add_argument("--noise", type=Path, nargs="+", action="extend", metavar="DIR", help="folders of noise recordings")
    p.add_argument("--rir", type=Path, metavar="DIR", help="room impulse responses for the reverb augmentation")
    p.add_argument("--room", type=Path, metavar="FILE_OR_DIR", help="a recording of the room the device listens in")
    p.add_argument("--synth", type=int, metavar="N", help="synthetic clips of the word from the TTS engines (default 0)")
    p.add_argument("--near-misses", type=int, metavar="N",
                   help="TTS clips per near-miss text (parts and sound-alikes of the word) as _unknown_ (default 0)")
    p.add_argument("--engines", nargs="+", help="TTS engines for --synth and --near-misses (default: all installed)")
    p.add_argument("--holdout", type=float, help="share of your clips held out for evaluation (default 0.2)")
    p.add_argument("--seed", type=int, help="seed of the splits, TTS and training (default 0)")
    p.add_argument("--epochs", type=int, help=f"training epochs before mining (default {DEFAULT_TRAIN['epochs']})")
    p.add_argument("--clips-per-class", type=int,
                   help=f"examples per class per epoch (default {DEFAULT_TRAIN['clips_per_class']})")
    p.add_argument("--window-s", type=float, help="model window in seconds (default: from your clips, at least 1)")
    p.add_argument("--hard-negative-epochs", type=int, metavar="N",
                   help="then mine the training speech for what the model takes for the word, add it to _unknown_ "
                        "and train N more epochs, in each of [custom] hard_negative_rounds (default 5 in each of "
                        "2 rounds; 0 = off)")
    p.add_argument("--base", help="run folder with model.keras whose conv weights start training, or 'none' "
                   "(default: kws12l, the DS-CNN-L base in models/kws12l-run; kws12m and kws12 = smaller ones)")
    p.add_argument("--target-fa-per-hour", type=float, help="calibration target (default 0.5)")
    p.add_argument("--smoothing-s", type=float, help="the bundle's score averaging span, which the threshold is "
                   "calibrated for (default 1.2)")
    p.add_argument("--name", help="bundle name (default: the word)")
    p.add_argument("--out", type=Path, help="folder for the bundle (default models/)")
    p.add_argument("--cache", type=Path, help="folder for decoded Speech Commands audio (default: none)")
    p.add_argument("--config", type=Path, help="TOML with [custom], [train], [augment], [features]; or a custom "
                   "run's settings.json")
    p.set_defaults(func=cmd_custom)

    p = sub.add_parser("evaluate-stream", help="a bundle's runtime detector over long audio: FRR per SNR, false "
                       "accepts per hour, DET curve")
    _add_stream_options(p, negatives_required=False)
    p.add_argument("--out", type=Path, default=None, help="folder for det.png and stream_eval.json "
                   "(default stream_eval_<bundle name>)")
    p.add_argument("--refractory-s", type=float, help="quiet time after a detection (default: the bundle's)")
    p.add_argument("--threshold", type=float, help="one threshold for every keyword (default: the bundle's)")
    p.set_defaults(func=cmd_evaluate_stream)

    p = sub.add_parser("calibrate", help="choose the threshold for a false-accept rate on negatives; write it "
                       "into the bundle's manifest")
    _add_stream_options(p, negatives_required=True)
    p.set_defaults(func=cmd_calibrate)
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
