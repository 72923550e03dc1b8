"""Sound-alike near misses: phonemes from the real espeak-ng, a weighted edit distance, words ranked by it."""

import logging
import shutil

import numpy as np
import pytest

from training import custom, phonetic

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_phonemes_come_one_list_per_text():
    found = phonetic.phonemes(["computer", "the former piece", "computer"])
    assert len(found) == 3 and found[0] == found[2]
    assert found[0][0] == "k" and "p" in found[0] and len(found[1]) > len(found[0])
    assert not any("'" in t or "," in t for tokens in found for t in tokens)  # stress marks are not phonemes


def test_distance_is_cheaper_for_similar_sounds():
    computer, = phonetic.phonemes(["computer"])
    assert phonetic.phoneme_distance(computer, computer) == 0
    d = {w: phonetic.phoneme_distance(computer, p) for w, p in zip(
        ("commuter", "completed", "banana", "computers"), phonetic.phonemes(["commuter", "completed", "banana",
                                                                              "computers"]))}
    assert d["commuter"] < d["banana"] and d["completed"] < d["banana"]
    computers = phonetic.phonemes(["computers"])[0]
    assert phonetic.phoneme_distance(computer, computers, inside=True) == 0 < d["computers"]
    # a vowel for a vowel costs less than a vowel for a consonant
    assert phonetic.phoneme_distance(["k", "a"], ["k", "E"]) < phonetic.phoneme_distance(["k", "a"], ["k", "s"])


def test_sound_alikes_rank_real_words_and_leave_out_the_word_itself(tmp_path):
    words = ["banana", "computers", "computer", "completed", "commuter", "window", "complete", "music", "compete"]
    found = phonetic.sound_alikes("computer", 4, words=words, cache_dir=tmp_path)
    names = [a.word for a in found]
    assert "computer" not in names and "computers" not in names  # the word itself: the model should fire
    assert names[:2] == ["commuter", "completed"] and "banana" not in names and "window" not in names
    assert "complete" not in names  # forms of one word count once
    assert {a.how for a in found} <= {"whole", "inside"} and all(a.distance > 0 for a in found)
    assert list(tmp_path.glob("phonemes-*.json"))  # cached, and the cache gives the same answer
    assert phonetic.sound_alikes("computer", 4, words=words, cache_dir=tmp_path) == found


def test_one_end_free_distances_match_a_word_ending_or_beginning():
    came, pewter, computer = phonetic.phonemes(["came", "pewter", "computer"])
    head, tail = computer[:3], computer[3:]  # k@m, pju:t3
    overcame = ["oU", "v", "3"] + came
    assert phonetic.phoneme_distance(head, overcame, skip_start=True) == phonetic.phoneme_distance(head, came) == 0.5
    assert phonetic.phoneme_distance(head, overcame) > 2  # anchored at both ends, "over" costs
    assert phonetic.phoneme_distance(tail, pewter + ["z", "@"], skip_end=True) == \
        phonetic.phoneme_distance(tail, pewter)  # what follows the beginning is free
    assert phonetic.phoneme_distance(head, ["s", "@"] + came, skip_start=True) == \
        phonetic.phoneme_distance(head, came, skip_start=True)  # what comes before the ending is free
    assert phonetic.phoneme_distance(tail, ["s", "@"] + pewter, skip_end=True) > \
        phonetic.phoneme_distance(tail, pewter, skip_end=True)  # but the beginning is not


def test_sound_alike_phrases_join_a_word_ending_to_a_word_beginning(tmp_path):
    words = ["the", "camp", "come", "banana", "utility", "pewter", "window", "compute", "computer", "river",
             "uterus", "american", "music"]
    found = phonetic.sound_alike_phrases("computer", 3, words=words, cache_dir=tmp_path)
    assert found and all(a.how == "across" and len(a.word.split()) == 2 for a in found)
    assert found[0].word == "camp utility" and found[0].distance == 0.125  # "kamp" + "ju:tIlIti"
    assert not {"banana", "window", "river", "the"} & {w for a in found for w in a.word.split()}
    assert "computer" not in " ".join(a.word for a in found)  # never the word itself
    used = [w for a in found for w in a.word.split()]
    assert len(used) == len(set(used))  # no word in two phrases
    assert [a.distance for a in found] == sorted(a.distance for a in found)
    assert all(phonetic._CONTAINS_WAKE_WORD <= a.distance <= 0.5 for a in found)
    assert phonetic.sound_alike_phrases("computer", 0, words=words, cache_dir=tmp_path) == []


def test_near_miss_texts_take_the_sound_alikes():
    texts = custom.near_miss_texts("computer", sound_alikes=["completed", "compu", "commute"])
    assert {"completed", "commute"} <= set(texts) and texts.count("compu") == 1
    assert texts[: 9] == custom.near_miss_texts("computer")[:9]  # the spelled variants come first, as before


def test_a_text_said_as_the_word_but_for_unstressed_vowels_is_no_near_miss():
    assert phonetic.said_as_word("computer", ["computar", "compute", "commuter", "cumputer", "computer"]) == [
        "computar", "computer"]  # "cumputer": espeak-ng stresses its first vowel; "compute" lacks the "-er"
    assert phonetic.said_as_word("alexa", ["lexa", "alexo", "alex", "olexa", "lex"]) == ["lexa"]  # a swallowed schwa
    assert phonetic.said_as_word("jarvis", ["jorvis", "charvis", "jarves"]) == []  # the stressed vowel, a consonant
    assert phonetic.said_as_word("hey_pi", ["hay pi", "hey bi"]) == ["hay pi"]
    assert custom.without_the_word("alexa", ["alex", "lexa", "alexander"]) == (["alex", "alexander"], ["lexa"])


def test_without_espeak_there_are_no_sound_alikes_and_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="training.custom"):
        assert custom.find_sound_alikes("computer", 8, None) == []
    assert len(caplog.records) == 1 and "espeak-ng" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.custom"):
        assert custom.without_the_word("computer", ["computar", "compu"]) == (["computar", "compu"], [])
    assert len(caplog.records) == 1 and "espeak-ng" in caplog.records[0].getMessage()


def test_word_salad_never_holds_the_word_and_mixes_in_the_sound_alikes():
    texts = phonetic.word_salad("computer", 200, np.random.default_rng(1), ["commuter", "completed"])
    words = [w for t in texts for w in t.split()]
    assert len(texts) == 200 and all(8 <= len(t.split()) <= 24 for t in texts)
    assert not any("computer" in w for w in words)
    share = sum(w in ("commuter", "completed") for w in words) / len(words)
    assert 0.02 < share < 0.07
    assert words.count("the") > words.count("river")  # drawn by frequency
    assert texts == phonetic.word_salad("computer", 200, np.random.default_rng(1), ["commuter", "completed"])
