"""Teacher-guided mining: the teacher finds a real 'off' inside a longer utterance."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from training.mine import MineSettings, best_windows, mine, occurrences

from conftest import KEYWORD_CLIPS, kws_train, read_clip

pytest.importorskip("tensorflow", reason="teachers need the [train] extra")


def test_occurrences_and_window_choice():
    assert occurrences("HE PUT IT ON AND TOOK IT OFF ON TIME", "on") == 2
    assert occurrences("ONLY ONCE UPON", "on") == 0
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.7, 0.6, 0.3])
    assert best_windows(scores, 3, 0.5, 3) == [1, 5]
    assert best_windows(scores, 1, 0.95, 3) == []


@pytest.fixture
def utterance_corpus(tmp_path, shared_data):
    """An 'utterance' of real test clips: yes ... off ... go, with its transcript."""
    words = dict(KEYWORD_CLIPS)
    parts, rng = [], np.random.default_rng(0)
    for word in ("yes", "off", "go"):
        parts += [0.002 * rng.standard_normal(8000).astype(np.float32), read_clip(words[word])]
    audio = np.concatenate(parts + [np.zeros(8000, np.float32)])
    off_start_s = (8000 + 16000 + 8000) / 16000
    (tmp_path / "spk").mkdir()
    sf.write(tmp_path / "spk" / "utt-1.flac", audio, 16000)
    sf.write(tmp_path / "spk" / "utt-2.flac", audio[:16000], 16000)
    with (tmp_path / "INDEX.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "speaker", "duration_s", "keywords_in_transcript", "transcript"])
        writer.writerow(["spk/utt-1.flac", "spk", audio.size / 16000, "yes off go", "YES OFF GO"])
        writer.writerow(["spk/utt-2.flac", "spk", 1.0, "yes", "YES"])
    return tmp_path, off_start_s


def test_mining_finds_the_word_where_it_was_said(utterance_corpus, tmp_path):
    from training.teachers import load_teacher

    corpus, off_start_s = utterance_corpus
    out = tmp_path / "mined"
    result = mine(MineSettings(corpus=corpus, out_dir=out, words=("off",)), load_teacher("mlperf"))
    assert len(result.paths) == 1  # one 'off' in the transcript, none in the other utterance
    path, word, utterance, offset_s, probability = result.rows[0]
    assert word == "off" and utterance == "utt-1" and probability >= 0.5
    assert abs(offset_s - off_start_s) <= 0.5
    clip, rate = sf.read(path)
    assert rate == 16000 and clip.size == 16000
    assert (out / "MINED.csv").read_text().count("\n") == 2


def test_cli_mine(utterance_corpus, tmp_path):
    corpus, _ = utterance_corpus
    result = kws_train("mine", str(corpus), "--out", str(tmp_path / "m"), "--words", "off", "--teacher", "mlperf")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert len(list((tmp_path / "m" / "off").glob("*.wav"))) == 1
    bad = kws_train("mine", str(corpus), "--out", str(tmp_path / "m"), "--words", "hello", "--teacher", "mlperf")
    assert bad.returncode == 2 and "can only mine keywords" in bad.stderr.decode()
