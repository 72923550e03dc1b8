"""``kws``: listen to a microphone (or file, or stdin) and act on keywords; record a wake word of your own.

Errors a user can fix print one line and exit 2; ``-v`` shows more.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from kws import __version__
from kws.cli_common import configure_logging
from kws.errors import AudioError, ConfigError, KwsError

_LOGGER = logging.getLogger(__name__)


def _load_model(args):
    """The bundle of ``--model`` (``classify``, ``info``)."""
    from kws.bundle import load_bundle

    return load_bundle(args.model)


def _load_models(args):
    """The bundles of every ``--model`` (or the config's ``model``), and the config file's settings."""
    from kws.bundle import load_bundle
    from kws.config import Config, load_config

    config = load_config(args.config) if args.config else Config()
    bundles = [load_bundle(model) for model in args.model or config.models or [None]]
    for i, bundle in enumerate(bundles):
        for other in bundles[:i]:
            if other.name == bundle.name:
                same = other.json_path.resolve() == bundle.json_path.resolve()
                raise ConfigError(
                    f"model {bundle.name} is given twice ({other.json_path}"
                    + (")" if same else f" and {bundle.json_path}, both named {bundle.name})")
                    + ": give each model once; a copy needs a name of its own (\"name\" in its .json)")
    return bundles, config


def _spotter(args, bundles, config):
    """One spotter for all models, each with its own detector settings (config keys resolved per model)."""
    from kws.config import check_against_models, for_model
    from kws.spotter import ModelHead, MultiSpotter, detector_settings_for

    check_against_models(config, {b.name: b.keywords for b in bundles}, str(args.config))
    keywords = tuple(args.keywords.split(",")) if args.keywords else config.keywords
    if keywords is not None:
        unknown = sorted({k for k in keywords if not any(k in b.keywords for b in bundles)})
        if unknown and len(bundles) == 1:
            raise ConfigError(f"keyword(s) {', '.join(unknown)} not in the model; it knows {', '.join(bundles[0].keywords)}")
        if unknown:
            raise ConfigError(f"keyword(s) {', '.join(unknown)} not in any of the models; "
                              + "; ".join(f"{b.name} knows {', '.join(b.keywords)}" for b in bundles))
    detector = dict(config.detector)
    for option in ("stride_ms", "smoothing_s", "refractory_s"):
        if getattr(args, option) is not None:
            detector[option] = getattr(args, option)
    heads = []
    for bundle in bundles:
        thresholds = dict(bundle.thresholds)
        thresholds.update(for_model(config.thresholds, bundle.name, bundle.keywords))
        if args.threshold is not None:
            thresholds = {k: args.threshold for k in thresholds}
        own = None if keywords is None else tuple(k for k in keywords if k in bundle.keywords)
        if keywords and not own:  # (an empty list in the config silences every model, as before)
            _LOGGER.warning("model %s knows none of the keywords %s: it is not run", bundle.name, ", ".join(keywords))
            continue
        settings = detector_settings_for(bundle, thresholds=thresholds, keywords=own, **detector)
        heads.append(ModelHead(bundle, settings))
    return MultiSpotter(heads)


def _flush(spotter, seconds: float) -> list:
    """Silence after the end of a stream, so a keyword at the very end still fills a window."""
    samples = int(seconds * spotter.sample_rate_hz)
    return spotter.feed(np.zeros(samples, np.float32))


def cmd_listen(args) -> int:
    """The daemon (``kws.daemon``): it loads config and models through ``_setup`` at the start and on SIGHUP."""
    from kws.daemon import Daemon, DaemonSettings, Setup
    from kws.sdnotify import Notifier
    from kws.status import status_file_from_environment

    def setup() -> Setup:
        bundles, config = _load_models(args)
        return Setup(config, _spotter(args, bundles, config))

    settings = DaemonSettings(
        input=args.input, device=args.device, save_detections=args.save_detections, config_path=args.config,
        status_interval_s=args.status_interval_s, status_file=args.status_file or status_file_from_environment())
    return Daemon(settings, setup, Notifier.from_environment()).run()


def cmd_status(args) -> int:
    from kws.status import StatusError, show_status

    try:
        show_status(args.status_file, args.json, sys.stdout)
    except StatusError as error:
        print(f"kws: error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_detect(args) -> int:
    from kws.sources import FileSource

    bundles, config = _load_models(args)
    spotter = _spotter(args, bundles, config)
    source = FileSource(args.file, spotter.sample_rate_hz)
    detections = []
    for chunk in source.chunks():
        detections += spotter.feed(chunk)
    detections += _flush(spotter, spotter.window_s)
    several = len(spotter.heads) > 1
    for d in detections:
        if args.json:
            print(json.dumps({"file": str(args.file), **d.to_dict()}))
        else:
            print(f"{d.offset_s:8.2f} s  {d.keyword:<10} {d.score:.3f}" + (f"  {d.model}" if several else ""))
    if not args.json:
        _LOGGER.info("%d detection(s) in %.2f s of audio", len(detections), source.audio.size / source.sample_rate_hz)
    return 0


def loudest_window(audio: np.ndarray, size: int, hop: int) -> np.ndarray:
    """The ``size``-sample stretch of ``audio`` with the most energy (zero-padded if shorter)."""
    if audio.size <= size:
        return np.pad(audio, (0, size - audio.size))
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, audio.size - size + 1, hop)
    best = int(starts[np.argmax(energy[starts + size] - energy[starts])])
    return audio[best : best + size]


def cmd_classify(args) -> int:
    from kws.audio_file import read_audio
    from kws.features import Mfcc
    from kws.interpreter import Classifier, make_interpreter

    bundle = _load_model(args)
    classifier = Classifier(make_interpreter(bundle.model_content))
    mfcc = Mfcc(bundle.features)
    failures = 0
    for path in args.files:
        try:
            audio = read_audio(path, bundle.features.sample_rate_hz)
        except AudioError as error:
            print(f"kws: error: {error}", file=sys.stderr)
            failures += 1
            continue
        clip = loudest_window(audio, bundle.window_samples, bundle.features.hop_samples)
        scores = classifier.predict(mfcc.compute(clip)[: bundle.window_frames])
        best = int(np.argmax(scores))
        if args.json:
            print(json.dumps({"file": str(path), "label": bundle.labels[best], "score": round(float(scores[best]), 4),
                              "scores": {l: round(float(s), 4) for l, s in zip(bundle.labels, scores)}}))
        else:
            print(f"{path}: {bundle.labels[best]} {scores[best]:.3f}")
    return 1 if failures else 0


def cmd_devices(args) -> int:
    from kws.sources import find_input_device, input_devices

    devices = input_devices()
    try:
        default = find_input_device(None)["index"] if devices else None
    except AudioError:
        default = None
    rows = [{"index": d["index"], "name": d["name"], "channels": d["max_input_channels"],
             "default_samplerate_hz": int(d["default_samplerate"]), "default": d["index"] == default}
            for d in devices]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print("no input devices found")
    for row in rows if not args.json else []:
        mark = "*" if row["default"] else " "
        print(f"{mark} {row['index']:>3}  {row['name']}  ({row['channels']} ch, {row['default_samplerate_hz']} Hz)")
    return 0


def cmd_info(args) -> int:
    from kws.interpreter import backend

    bundle = _load_model(args)
    engine = backend()
    info = {
        "model": bundle.name, "manifest": str(bundle.json_path), "tflite": str(bundle.tflite_path),
        "labels": list(bundle.labels), "keywords": list(bundle.keywords), "thresholds": dict(bundle.thresholds),
        "architecture": bundle.architecture, "parameters": bundle.parameters, "macs": bundle.macs,
        "size_bytes": bundle.size_bytes, "sha256": bundle.sha256, "window_s": round(bundle.window_s, 4),
        "window_frames": bundle.window_frames, "features": bundle.features.to_dict(),
        "input": {"dtype": bundle.input.dtype, "shape": list(bundle.input.shape), "scale": bundle.input.scale,
                  "zero_point": bundle.input.zero_point},
        "output": {"dtype": bundle.output.dtype, "shape": list(bundle.output.shape), "scale": bundle.output.scale,
                   "zero_point": bundle.output.zero_point},
        "metrics": bundle.metrics, "calibration": dict(bundle.calibration) or None,
        "backend": engine.name, "backend_version": engine.version, "kws_version": __version__,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    f = bundle.features
    print(f"model       {bundle.name}  ({bundle.json_path})")
    print(f"keywords    {', '.join(bundle.keywords)}")
    print(f"labels      {', '.join(bundle.labels)}")
    print(f"network     {bundle.architecture or '?'}, {bundle.parameters} parameters, {bundle.macs} MACs, "
          f"{bundle.size_bytes} bytes, {bundle.input.dtype} in / {bundle.output.dtype} out")
    print(f"features    MFCC {f.n_mfcc} of {f.n_mels} mel bands {f.fmin_hz:g}-{f.fmax_hz:g} Hz, window {f.window_ms:g} ms, "
          f"hop {f.hop_ms:g} ms, {f.sample_rate_hz} Hz; {bundle.window_frames} frames = {bundle.window_s:.2f} s")
    print(f"detector    thresholds {', '.join(f'{k} {v:g}' for k, v in bundle.thresholds.items())}; "
          f"smoothing {bundle.smoothing_s:g} s, refractory {bundle.refractory_s:g} s")
    for name, kinds in bundle.metrics.items():
        print(f"accuracy    {name}: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in kinds.items()))
    if bundle.calibration:
        print(f"calibration {_calibration_line(bundle.calibration)}")
    print(f"interpreter {engine.name} {engine.version}")
    return 0


def _calibration_line(calibration) -> str:
    """One line about a bundle's ``calibration`` (numbers validated on load; other fields shown as they are)."""
    c = calibration
    text = (f"threshold {c.get('threshold', 0):g} for at most {c.get('target_fa_per_hour', 0):g} false accepts "
            f"per hour (measured {c.get('fa_per_hour', 0):.2f}/h on {c.get('negative_hours', 0):.2f} h of negatives")
    text += f", {c['date']})" if c.get("date") else ")"
    frr = c.get("frr")
    if isinstance(frr, dict) and frr:
        text += "; false rejects " + ", ".join(f"{k} {v:.1%}" if isinstance(v, (int, float)) else f"{k} {v}"
                                               for k, v in frr.items())
    return text


def cmd_record(args) -> int:
    from kws.record import Console, RecordSettings, record

    # Ctrl-C ends the session (keeping the clips written), even when started from a shell that ignores
    # SIGINT for background jobs, which a child would otherwise inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    options = {"count": args.count, "out_dir": args.out, "device": args.device, "take_s": args.take_s,
               "countdown_s": args.countdown_s}
    settings = RecordSettings(word=args.word, **{k: v for k, v in options.items() if v is not None})
    return record(settings, Console(sys.stderr), args.sources or ())


def cmd_wyoming(args) -> int:
    from kws.wyoming_server import ServerSettings, WakeEngine, run_server  # needs the optional wyoming package

    settings = ServerSettings(uri=args.uri) if args.uri else ServerSettings()  # a bad URI fails before the models load
    bundles, config = _load_models(args)
    spotter = _spotter(args, bundles, config)
    engine = WakeEngine.from_spotter(spotter)
    from kws.actions import Dispatcher, HookAction, configured_actions

    actions = [HookAction(config.hooks)] if config.hooks.commands else []
    actions += configured_actions(config, {h.bundle.name: h.settings.keywords or h.bundle.keywords  # [mqtt], [webhook]
                                           for h in spotter.heads})
    dispatcher = Dispatcher(actions) if actions else None
    try:
        return run_server(engine, settings, dispatcher.submit if dispatcher is not None else None)
    finally:
        if dispatcher is not None:
            dispatcher.close()


def _model_options(p: argparse.ArgumentParser, detector: bool) -> None:
    if not detector:
        p.add_argument("--model", help="bundle name in models/ or path to its .json/.tflite (default: kws12)")
    else:
        p.add_argument("--model", action="append", metavar="MODEL",
                       help="bundle name in models/ or path to its .json/.tflite (default: kws12); "
                            "repeat to run several models at once")
        p.add_argument("--config", type=Path, help="TOML config (model, device, thresholds, hooks)")
        p.add_argument("--keywords", help="comma-separated keywords that may fire (default: all)")
        p.add_argument("--threshold", type=float, help="one threshold for every keyword, 0 to 1")
        p.add_argument("--stride-ms", type=float, help="audio between inferences (default 100)")
        p.add_argument("--smoothing-s", type=float, help="span of score averaging")
        p.add_argument("--refractory-s", type=float, help="quiet time after a detection")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws", description="On-device keyword spotting.")
    parser.add_argument("--version", action="version", version=f"kws {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (on stderr)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("listen", help="microphone -> detections (JSON lines on stdout) -> hooks")
    _model_options(p, detector=True)
    p.add_argument("--device", help="input device: index or part of its name (see `kws devices`)")
    p.add_argument("--input", help="read an audio file, or - for raw 16-bit mono PCM on stdin, instead of a microphone")
    p.add_argument("--save-detections", type=Path, metavar="DIR",
                   help="save the audio around each detection (1.5 s before to 0.5 s after) as WAV files in DIR")
    p.add_argument("--status-interval-s", type=float, metavar="S",
                   help="a status line in the log (and the status file) every S seconds (default 300, or "
                        "[service] status_interval_s in the config)")
    p.add_argument("--status-file", type=Path, metavar="PATH",
                   help="write the status as JSON to PATH (default $STATE_DIRECTORY/status.json under systemd, "
                        "else none); `kws status` reads it")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("status", help="how the kws service is doing: its status file, else systemd's view")
    p.add_argument("--status-file", type=Path, metavar="PATH",
                   help="the file `kws listen --status-file` writes (default $STATE_DIRECTORY/status.json, "
                        "else /var/lib/kws/status.json)")
    p.add_argument("--json", action="store_true", help="the status file as it is")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("detect", help="stream a file through the detector; print each detection's offset")
    p.add_argument("file", type=Path)
    _model_options(p, detector=True)
    p.add_argument("--json", action="store_true", help="one JSON object per detection")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("classify", help="each file as one clip: top label and class scores")
    p.add_argument("files", nargs="+", type=Path)
    _model_options(p, detector=False)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("devices", help="list input devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("info", help="the model, its settings and the interpreter in use")
    _model_options(p, detector=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("record", help="record a custom wake word: guided takes, trimmed and checked, as WAV clips")
    p.add_argument("--word", required=True, help="the word; its clips go to OUT/WORD/NNNN.wav")
    p.add_argument("--count", type=int, help="clips wanted in the folder, those already there included (default 50)")
    p.add_argument("--out", type=Path, help="parent folder of the word's folder (default ./recordings)")
    p.add_argument("--device", help="input device: index or part of its name (see `kws devices`)")
    p.add_argument("--take-s", type=float, help="length of each take (default 2.0)")
    p.add_argument("--countdown-s", type=float, help="countdown before each take, 0 for none (default 1.0)")
    p.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="FILE_OR_DIR",
                   help="import these audio files (folders are searched) instead of recording; --count does not apply")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("wyoming", help="wake-word server for Home Assistant's voice pipeline (Wyoming protocol)")
    _model_options(p, detector=True)
    p.add_argument("--uri", help="where to listen: tcp://HOST:PORT or unix://PATH (default tcp://0.0.0.0:10400)")
    p.set_defaults(func=cmd_wyoming)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    try:
        return args.func(args)
    except KwsError as error:
        print(f"kws: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
