"""Streaming evaluation and calibration: the real kws12 bundle, real `yes` clips, real LibriSpeech and household noise."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from kws.audio_file import read_audio
from kws.bundle import load_bundle
from kws.errors import BundleError
from kws.spotter import KeywordSpotter, detector_settings_for
from training import stream_eval as se

from conftest import DEFAULT_MODEL, ROOT, SHARED, SPEECH_COMMANDS, kws_train, one_error_line, run_kws

LIBRISPEECH = SHARED / "data" / "librispeech_dev_clean_part"
HOUSEHOLD = SHARED / "data" / "household_noise"
NOISE_FILES = ("aircon_0.flac", "street_0.flac")
SNRS_DB = (20.0, 10.0, 5.0, 0.0)






@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data):
    """4 `yes` clips; 3 keyword-free LibriSpeech utterances and 1 with a keyword, under an INDEX.csv; 2 noise files."""
    root = tmp_path_factory.mktemp("stream_eval")
    yes = root / "yes"
    yes.mkdir()
    for path in sorted((SPEECH_COMMANDS / "yes").iterdir())[:4]:
        shutil.copy(path, yes / path.name)
    with open(LIBRISPEECH / "INDEX.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    free = [r for r in rows if not r["keywords_in_transcript"] and 4 < float(r["duration_s"]) < 9][:3]
    spoken = [r for r in rows if r["keywords_in_transcript"] and float(r["duration_s"]) < 6][:1]
    libri = root / "librispeech"
    for row in free + spoken:
        (libri / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBRISPEECH / row["path"], libri / row["path"])
    with open(libri / "INDEX.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(free + spoken)
    noise = root / "noise"
    noise.mkdir()
    for name in NOISE_FILES:
        shutil.copy(HOUSEHOLD / name, noise / name)
    return {"root": root, "yes": yes, "libri": libri, "noise": noise, "free": free, "spoken": spoken}


@pytest.fixture(scope="module")
def evaluation(inputs):
    bundle = load_bundle(DEFAULT_MODEL)
    scorer = se.StreamScorer(bundle)
    settings = se.StreamEvalSettings(snrs_db=SNRS_DB)
    noise = se.load_noise([inputs["noise"]], scorer.sample_rate_hz)
    positives = se.score_positives(scorer, se.positive_clips(inputs["yes"]), "yes", settings, noise)
    negatives = se.score_negatives(scorer, se.negative_files([inputs["libri"], inputs["noise"]], bundle.keywords))
    replayer = se.Replayer(bundle, detector_settings_for(bundle), negatives, positives)
    return bundle, scorer, settings, noise, replayer


def spotter_detections(bundle, settings, audio, chunk=1234):
    """What the runtime reports: ``KeywordSpotter`` fed in chunks, then the silence ``kws detect`` adds."""
    spotter = KeywordSpotter(bundle, settings)
    found = []
    for start in range(0, audio.size, chunk):
        found += spotter.feed(audio[start : start + chunk])
    return found


def test_negatives_from_an_index_leave_out_keyword_transcripts(inputs, evaluation):
    bundle, _, _, _, replayer = evaluation
    listing = se.negative_files([inputs["libri"]], bundle.keywords)
    assert sorted(p.name for p in listing.files) == sorted(r["path"].split("/")[-1] for r in inputs["free"])
    assert listing.excluded == 1
    assert replayer.negatives.excluded == 1 and len(replayer.negatives.streams) == 3 + len(NOISE_FILES)
    expected_s = sum(float(r["duration_s"]) for r in inputs["free"]) + sum(sf.info(HOUSEHOLD / n).duration for n in NOISE_FILES)
    assert abs(replayer.hours * 3600 - expected_s) < 0.1
    # the index's column counts only for the keywords asked about: a custom word keeps "on" and "up" utterances
    spoken_word = inputs["spoken"][0]["keywords_in_transcript"].split()[0]
    for keywords, kept in ((("computer",), 4), ((spoken_word,), 3), (("computer", spoken_word.upper()), 3)):
        listing = se.negative_files([inputs["libri"]], keywords)
        assert (len(listing.files), listing.excluded) == (kept, 4 - kept), keywords
    # a transcript that names a keyword of the bundle is left out even when the index's column is empty
    assert se.mentions("AND I SAID YES'M TO HIM", "yes") and not se.mentions("YESTERDAY", "yes")
    assert se.mentions("OK HEY JARVIS LIGHTS", "hey_jarvis") and not se.mentions("HEY THERE JARVIS", "hey_jarvis")


def test_negatives_in_librispeech_layout_leave_out_keyword_transcripts(inputs, tmp_path):
    """LibriSpeech as released: SPEAKER/CHAPTER/ID.flac with SPEAKER-CHAPTER.trans.txt beside them, no INDEX.csv."""
    chapters: dict = {}
    for row in inputs["free"] + inputs["spoken"]:
        utterance = row["path"].split("/")[-1].rsplit(".", 1)[0]
        speaker, chapter, _ = utterance.split("-")
        folder = tmp_path / "LibriSpeech" / "dev-clean" / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBRISPEECH / row["path"], folder / f"{utterance}.ogg")
        chapters.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{utterance} {row['transcript']}")
    for listing, lines in chapters.items():
        listing.write_text("\n".join(lines) + "\n")
    untranscribed = tmp_path / "LibriSpeech" / "dev-clean" / "0000" / "own.ogg"  # no transcript names it: kept
    untranscribed.parent.mkdir()
    shutil.copy(LIBRISPEECH / inputs["free"][0]["path"], untranscribed)
    root = tmp_path / "LibriSpeech" / "dev-clean"
    spoken_word = inputs["spoken"][0]["keywords_in_transcript"].split()[0]
    listing = se.negative_files([root], (spoken_word,))
    assert sorted(p.stem for p in listing.files) == sorted(
        [r["path"].split("/")[-1].rsplit(".", 1)[0] for r in inputs["free"]] + ["own"])
    assert listing.excluded == 1
    listing = se.negative_files([root], ("computer",))
    assert (len(listing.files), listing.excluded) == (5, 0)


def test_replay_gives_exactly_the_detections_of_the_keyword_spotter(inputs, evaluation):
    bundle, scorer, _, noise, _ = evaluation
    flush = np.zeros(scorer.flush_samples, np.float32)
    libri = [read_audio(inputs["libri"] / r["path"], 16000) for r in inputs["free"][:2]]
    clip = read_audio(sorted(inputs["yes"].iterdir())[1], 16000)
    rng = np.random.default_rng(3)
    positive = se.embed(clip, 24000, noise=se.noise_stretch(noise, clip.size + 48000, rng), snr_db=5.0)
    streams = [np.concatenate([a, flush]) for a in libri] + [positive]
    total = 0
    for smoothing_s in (0.0, 0.3):
        base = detector_settings_for(bundle, smoothing_s=smoothing_s)
        for threshold in (0.5, 0.7, 0.9):
            settings = dataclasses.replace(base, thresholds={k: threshold for k in bundle.keywords})
            for audio in streams:
                expected = [(d.keyword, d.score, d.offset_s) for d in spotter_detections(bundle, settings, audio)]
                got = [(d.keyword, d.score, d.offset_s)
                       for d in se.replay(se.smooth(scorer.score(audio), bundle, settings), bundle, settings)]
                assert got == expected, (smoothing_s, threshold)
                total += len(expected)
    assert total >= 10  # not vacuous: speech and the noisy `yes` do fire
    # scoring a file with flush=True is the same stream as the file followed by the silence of `kws detect`
    assert np.array_equal(scorer.score(libri[0], flush=True).probabilities, scorer.score(streams[0]).probabilities)


def test_false_rejects_rise_as_snr_falls_and_false_accepts_fall_as_threshold_rises(evaluation):
    bundle, _, settings, _, replayer = evaluation
    point = replayer.point(replayer.settings)
    rates = [point.frr[c] for c in settings.conditions]
    assert list(point.frr) == ["clean", "20 dB", "10 dB", "5 dB", "0 dB"]
    assert rates == sorted(rates) and rates[-1] > rates[0], rates
    sweep = replayer.sweep(replayer.usable(settings.det_grid()))
    fa = [p.fa_per_hour for p in sweep]
    assert fa == sorted(fa, reverse=True), fa
    assert fa[0] > 0 and fa[-1] == 0
    clean = [p.frr["clean"] for p in sweep]
    assert clean == sorted(clean) and clean[0] == 0


def test_threshold_for_rate_is_the_lowest_that_meets_the_target(evaluation):
    _, _, settings, _, replayer = evaluation
    candidates = replayer.candidate_thresholds(settings.grid())
    assert replayer.highest_threshold == 0.996 == candidates.max()  # kws12 outputs at most 255/256
    rate = se.threshold_for_rate(replayer, 0.5, candidates)
    assert rate.target_met and rate.false_accepts == 0 and rate.fa_per_hour <= 0.5
    assert rate.one_false_accept_per_hour > 0.5  # this little audio cannot resolve 0.5/h: it allows none
    below = candidates[candidates < rate.threshold].max()
    assert replayer.false_accepts(replayer.at(below)) > 0  # the next lower candidate fires: the choice is tight
    assert se.threshold_for_rate(replayer, 1e6, candidates).threshold == settings.lowest_threshold
    unreachable = se.threshold_for_rate(replayer, 0.0, [0.5, 0.6])
    assert not unreachable.target_met and unreachable.threshold == 0.6 and unreachable.false_accepts > 0


def test_the_highest_negatives_find_a_planted_word_and_the_threshold_sits_above_them(inputs, evaluation, tmp_path):
    bundle, scorer, _, _, _ = evaluation
    speech = read_audio(inputs["libri"] / inputs["free"][0]["path"], 16000)
    clip = read_audio(sorted(inputs["yes"].iterdir())[0], 16000)
    at_s = 2.0
    planted = np.concatenate([speech[: int(at_s * 16000)], clip, speech[int(at_s * 16000) :]])  # "yes" mid-sentence
    sf.write(tmp_path / "planted.wav", planted, 16000)
    listing = se.negative_files([tmp_path / "planted.wav", inputs["libri"], inputs["noise"]], bundle.keywords)
    replayer = se.Replayer(bundle, detector_settings_for(bundle), se.score_negatives(scorer, listing))
    highest = replayer.highest_negatives(5)

    assert len(highest) == 5 and [m.score for m in highest] == sorted((m.score for m in highest), reverse=True)
    first = highest[0]
    assert (first.name, first.keyword) == (str(tmp_path / "planted.wav"), "yes")
    assert first.start_s < at_s + clip.size / 16000 and first.end_s > at_s  # its audio holds the planted clip
    assert abs(first.end_s - first.start_s - (bundle.window_s + replayer.settings.smoothing_s)) < 1e-6
    assert first.score == max(float(s.peak.max()) for s in replayer._negatives)
    for a in highest:  # moments of one file are at least the audio of one score apart
        for b in highest:
            if a is not b and a.name == b.name:
                assert abs(a.end_s - b.end_s) >= bundle.window_s + replayer.settings.smoothing_s - 1e-6
    # with no false accept allowed the threshold sits just above the first; at its score that moment fires
    rate = se.threshold_for_rate(replayer, 0.5)
    assert rate.false_accepts == 0 and rate.threshold > first.score
    assert replayer.false_accepts(replayer.at(first.score)) >= 1
    lines = se.describe_highest(highest, rate.threshold)
    assert f"all below the threshold {rate.threshold:g}" in lines[0] and len(lines) == 6
    assert lines[1].strip().startswith(f"{first.shown_score:.4f} 'yes' in {tmp_path / 'planted.wav'} at ")
    assert first.shown_score <= first.score < first.shown_score + 1e-4
    reach = sum(m.score >= highest[1].score for m in highest)  # 2, or more where scores tie (int8 outputs)
    assert f"; {reach} of them reach the threshold" in se.describe_highest(highest, highest[1].score)[0] and reach >= 2
    assert replayer.highest_negatives(2) == highest[:2]


def test_calibrate_writes_the_threshold_and_a_record_into_a_copy(inputs, evaluation, tmp_path):
    _, _, _, _, replayer = evaluation
    for suffix in (".json", ".tflite"):
        shutil.copy(DEFAULT_MODEL.with_suffix(suffix), tmp_path / f"kws12{suffix}")
    original = load_bundle(DEFAULT_MODEL)
    copy = tmp_path / "kws12.json"
    result = kws_train("calibrate", str(copy), "--negatives", str(inputs["libri"]), str(inputs["noise"]),
                       "--positives", str(inputs["yes"]), "--noise", str(inputs["noise"]), "--snr", "10", "0",
                       "--smoothing-s", "0.5")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    bundle = load_bundle(copy)
    # the threshold holds for the span it was chosen with: calibrate writes that span into the bundle
    assert bundle.smoothing_s == 0.5 != original.smoothing_s
    assert bundle.calibration["detector"]["smoothing_s"] == 0.5
    assert bundle.calibration["previous_smoothing_s"] == original.smoothing_s
    replayer = se.Replayer(bundle, detector_settings_for(bundle), replayer.negatives)
    calibration = bundle.calibration
    threshold = calibration["threshold"]
    assert set(bundle.thresholds.values()) == {threshold} and set(bundle.thresholds) == set(original.keywords)
    assert calibration["target_fa_per_hour"] == 0.5 and calibration["fa_per_hour"] <= 0.5
    assert abs(calibration["negative_hours"] - replayer.hours) < 1e-3
    assert calibration["negative_sources"] == [str(inputs["libri"]), str(inputs["noise"])]
    assert set(calibration["frr"]) == {"clean", "10 dB", "0 dB"} and calibration["date"]
    assert calibration["previous_thresholds"] == dict(original.thresholds)
    # what sets the threshold: the negatives' highest moments, below it (no false accept allowed in this little audio)
    highest = calibration["highest_negatives"]
    assert [m["score"] for m in highest] == [m.shown_score for m in replayer.highest_negatives()] and highest
    assert all(m["score"] < threshold and m["start_s"] < m["end_s"] for m in highest)
    assert f"all below the threshold {threshold:g}" in result.stdout.decode()
    assert f"  {highest[0]['score']:.4f} '{highest[0]['keyword']}' in {highest[0]['file']} at " in result.stdout.decode()
    # measured independently on the same negatives: at most the target
    assert replayer.false_accepts(replayer.at(threshold)) / replayer.hours <= 0.5
    assert bundle.sha256 == original.sha256 == json.loads(copy.read_text())["sha256"]
    assert load_bundle(DEFAULT_MODEL).thresholds == original.thresholds  # models/ untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kws12.json", "kws12.tflite"]  # no temporary left

    info = run_kws("info", "--model", str(copy))
    assert info.returncode == 0, info.stderr.decode()
    line = [x for x in info.stdout.decode().splitlines() if x.startswith("calibration")]
    assert line and f"threshold {threshold:g}" in line[0] and "0.5 false accepts per hour" in line[0]
    as_json = json.loads(run_kws("info", "--json", "--model", str(copy)).stdout)
    assert as_json["calibration"]["threshold"] == threshold


def test_evaluate_stream_writes_det_png_and_figures_and_skips_unreadable_negatives(inputs, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF this is not audio")
    out = tmp_path / "out"
    result = kws_train("evaluate-stream", str(DEFAULT_MODEL), "--positives", str(inputs["yes"]),
                       "--negatives", str(inputs["libri"]), str(broken), "--noise", str(inputs["noise"]),
                       "--snr", "10", "0", "--out", str(out), "--smoothing-s", "0.2")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    stdout = result.stdout.decode()
    assert "FRR clean" in stdout and "FRR 0 dB" in stdout and "0.7 (bundle)" in stdout
    assert f"skipped (unreadable): {broken}" in stdout
    png = (out / "det.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and png.rstrip(b"\x00")[-8:-4] == b"IEND"
    import matplotlib.image

    assert matplotlib.image.imread(out / "det.png").shape[2] in (3, 4)
    figures = json.loads((out / "stream_eval.json").read_text())
    assert figures["detector"]["smoothing_s"] == 0.2
    assert figures["negatives"]["files"] == 3 and len(figures["negatives"]["skipped"]) == 1
    assert figures["positives"]["clips"] == 4 and figures["positives"]["conditions"] == ["clean", "10 dB", "0 dB"]
    assert set(figures["at_thresholds"]["frr"]) == {"clean", "10 dB", "0 dB"}
    assert figures["for_target"]["target_met"] and figures["for_target"]["fa_per_hour"] <= 0.5
    assert len(figures["sweep"]) > 50
    scores = [m["score"] for m in figures["highest_negatives"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert "highest-scoring moments of the negatives" in stdout


@pytest.mark.parametrize("case,message", [
    ("missing bundle", "model manifest {d}/none.json not found"),
    ("empty positives", "positives folder {d}/empty holds no audio files"),
    ("unreadable negatives only", "none of the 1 negative audio file(s) could be read"),
    ("missing negatives", "negatives {d}/gone.wav not found"),
    ("snr without noise", "the SNR conditions need background noise"),
    ("unreadable transcript", "transcript {d}/libri/84/121123/84-121123.trans.txt cannot be read"),
])
def test_bad_inputs_are_one_line(inputs, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.wav").write_bytes(b"RIFF this is not audio")
    chapter = tmp_path / "libri" / "84" / "121123"
    chapter.mkdir(parents=True)
    shutil.copy(LIBRISPEECH / inputs["free"][0]["path"], chapter / "84-121123-0000.ogg")
    (chapter / "84-121123.trans.txt").write_bytes(b"84-121123-0000 \xff\xfe NOT TEXT\n")
    for suffix in (".json", ".tflite"):  # a good bundle where the error is to be about something else
        shutil.copy(DEFAULT_MODEL.with_suffix(suffix), tmp_path / f"kws12{suffix}")
    d, yes, model = str(tmp_path), str(inputs["yes"]), str(tmp_path / "kws12.json")
    args = {
        "missing bundle": ["calibrate", f"{d}/none.json", "--negatives", f"{d}/broken.wav"],
        "empty positives": ["evaluate-stream", model, "--positives", f"{d}/empty"],
        "unreadable negatives only": ["calibrate", model, "--negatives", f"{d}/broken.wav"],
        "missing negatives": ["evaluate-stream", model, "--positives", yes, "--negatives", f"{d}/gone.wav"],
        "snr without noise": ["evaluate-stream", model, "--positives", yes, "--snr", "10"],
        "unreadable transcript": ["calibrate", model, "--negatives", f"{d}/libri"],
    }[case]
    line = one_error_line(kws_train(*args))
    assert message.format(d=d) in line
    assert "Traceback" not in line


def test_a_bad_calibration_record_is_refused_and_its_absence_is_fine(tmp_path):
    for suffix in (".json", ".tflite"):
        shutil.copy(DEFAULT_MODEL.with_suffix(suffix), tmp_path / f"kws12{suffix}")
    manifest = json.loads((tmp_path / "kws12.json").read_text())
    assert "calibration" not in manifest and load_bundle(tmp_path / "kws12.json").calibration == {}
    manifest["calibration"] = {"threshold": "high"}
    (tmp_path / "kws12.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="calibration.threshold must be a number"):
        load_bundle(tmp_path / "kws12.json")


def test_stream_eval_needs_no_tensorflow():
    code = ("import sys, training.stream_eval, training.cli; "
            "print([m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"


def test_speech_levels_of_rows_are_speech_rms_of_each_row():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 16000)).astype(np.float32) * np.array([[0.1], [0.01], [0.3], [0.001], [0.05]])
    rows[1, :8000] *= 0.01  # half quiet: only the loud frames count
    rows[4] = 0.0  # a silent row
    levels = se.speech_levels_dbfs(rows, 16000)
    expected = [20 * np.log10(se.speech_rms(row, 16000)) for row in rows[:4]]
    np.testing.assert_allclose(levels[:4], expected, atol=1e-6)
    assert levels[4] == -np.inf
    assert abs(levels[1] - 20 * np.log10(0.01)) < 0.2  # the loud half's level, not the mean over both halves
