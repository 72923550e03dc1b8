"""Real words that sound like a wake word, found by their phonemes.

Near misses made by spelling ("compu", "gomputer") miss the words that trip a
model in real speech: "completed" and "commuter" for "computer", "Alexander"
for "alexa". This module phonemizes a vocabulary with espeak-ng (the English
words of ``wordfreq``, the most frequent first, when it is installed, else the
curated list of ``training.custom``) and ranks the words by a weighted edit
distance between phoneme strings, two ways:

* ``whole``: the word against the wake word, end to end ("commuter", "completed");
* ``inside``: the wake word against the closest stretch of a longer word
  ("Alexander" holds something close to "alexa");
* ``across`` (``sound_alike_phrases``): two words whose junction comes close,
  the end of one to the wake word's start, the start of the next to its rest
  ("camp utility").

Words that hold the wake word itself ("computers") are left out: the model
should fire on them. Phonemes are cached per espeak-ng version and vocabulary.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Sequence

import numpy as np

from kws.bundle import atomic_write

__all__ = ["SoundAlike", "phonemes", "phoneme_distance", "said_as_word", "sound_alike_phrases", "sound_alikes",
           "vocabulary", "word_salad"]

_LOGGER = logging.getLogger(__name__)

_VOICE = "en-us"
_TIMEOUT_S = 120.0
_PAUSES = ("_:", "_", "||", "|")
"""espeak-ng's pause and boundary marks: no phonemes."""
_VOWEL_START = re.compile(r"^[aeiouAEIOUV@03]")
_REDUCED = {"@", "I", "i", "3"}
_GROUPS = ({"p", "b", "t", "d", "k", "g", "tS", "dZ", "?"}, {"f", "v", "T", "D", "s", "z", "S", "Z", "h"},
           {"m", "n", "N"}, {"l", "r", "w", "j"})
_CONTAINS_WAKE_WORD = 0.07
"""An ``inside`` distance under this share of the wake word's phonemes (less than one reduced vowel in eight):
the word holds the wake word itself."""


def _normalized(token: str) -> str:
    token = token.lstrip("',=%")
    if token == "a#":
        return "@"
    return token.rstrip("#2") or token


def _tokens(line: str) -> list[str]:
    return [t for t in (_normalized(t) for t in line.split()) if t and t not in _PAUSES]


def phonemes(texts: Sequence[str], voice: str = _VOICE) -> list[list[str]]:
    """espeak-ng's phonemes of each text (one call for all); raises OSError when espeak-ng is missing."""
    return [_tokens(line) for line in _espeak(texts, voice)]


def _espeak(texts: Sequence[str], voice: str) -> list[str]:
    """espeak-ng's phoneme line of each text, stress marks and all."""
    if not texts:
        return []
    if shutil.which("espeak-ng") is None:
        raise OSError("espeak-ng not found (apt-get install espeak-ng)")
    lines = "\n".join(re.sub(r"[\n.]+", " ", t).strip() + "." for t in texts)
    result = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice, "--sep= "], input=lines, capture_output=True,
                            text=True, timeout=_TIMEOUT_S)
    out = [line for line in result.stdout.split("\n") if line.strip()]
    if result.returncode != 0 or len(out) != len(texts):
        raise OSError(f"espeak-ng gave {len(out)} phoneme line(s) for {len(texts)} text(s) "
                      f"(exit {result.returncode}: {result.stderr.strip()[:200]})")
    return out


def _stressed_skeleton(line: str) -> list[str]:
    """The phonemes of an espeak-ng line without its unstressed vowels (a vowel with no stress mark), then
    whether its last syllable is stressed: "compute" is not "computer" without its "-er"."""
    kept, last_stressed = [], False
    for token in line.split():
        phoneme = _normalized(token)
        if not phoneme or phoneme in _PAUSES:
            continue
        if _VOWEL_START.match(phoneme):
            last_stressed = token.lstrip("=%")[:1] in ("'", ",")
            if not last_stressed:
                continue
        kept.append(phoneme)
    return kept + [f"last syllable stressed: {last_stressed}"]


def said_as_word(wake_word: str, texts: Sequence[str], voice: str = _VOICE) -> list[str]:
    """The ``texts`` espeak-ng says as ``wake_word`` but for unstressed vowels: "computar" for "computer",
    "lexa" for "alexa" (its first vowel is unstressed); not "jorvis" for "jarvis" (a stressed vowel), nor
    "compute" or "lex" (the word's unstressed last syllable gone).

    Such a text is a way of saying the word (a reduced vowel is said many ways, swallowed, or lost in
    noise), so it is no near miss: as an ``_unknown_`` example it would teach the model to miss the word.
    Raises OSError without espeak-ng.
    """
    if not texts:
        return []
    lines = _espeak([" ".join(_spoken(wake_word)), *texts], voice)
    word = _stressed_skeleton(lines[0])
    return [text for text, line in zip(texts, lines[1:]) if _stressed_skeleton(line) == word]


def _cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    vowel_a, vowel_b = bool(_VOWEL_START.match(a)), bool(_VOWEL_START.match(b))
    if vowel_a and vowel_b:
        return 0.5
    if vowel_a != vowel_b:
        return 1.2
    return 0.5 if any(a in g and b in g for g in _GROUPS) else 0.9


def _gap(token: str) -> float:
    return 0.5 if token in _REDUCED else 1.0


def phoneme_distance(target: Sequence[str], candidate: Sequence[str], inside: bool = False,
                     skip_start: bool = False, skip_end: bool = False) -> float:
    """Weighted edit distance of ``target`` to ``candidate``; with ``inside``, to its closest stretch.

    ``skip_start`` and ``skip_end`` free only one end of ``candidate``: the distance to its
    closest ending ("came" ends like the "com" of "computer") or beginning.
    """
    skip_start, skip_end = skip_start or inside, skip_end or inside
    previous = [0.0] * (len(candidate) + 1)
    if not skip_start:
        for j in range(1, len(candidate) + 1):
            previous[j] = previous[j - 1] + _gap(candidate[j - 1])
    for a in target:
        current = [previous[0] + _gap(a)]
        for j, b in enumerate(candidate, 1):
            current.append(min(previous[j - 1] + _cost(a, b), previous[j] + _gap(a), current[j - 1] + _gap(b)))
        previous = current
    return min(previous) if skip_end else previous[-1]


def vocabulary(size: int = 20000) -> tuple[list[str], np.ndarray]:
    """The ``size`` most frequent English words of ``wordfreq`` and their frequencies; without wordfreq, the
    curated common words, all as frequent."""
    try:
        import wordfreq
    except ImportError:
        from training.custom import COMMON_WORDS

        return list(COMMON_WORDS), np.ones(len(COMMON_WORDS))
    words = [w for w in wordfreq.top_n_list("en", size) if re.fullmatch(r"[a-z]+(?:'[a-z]+)?", w)]
    return words, np.array([wordfreq.word_frequency(w, "en") for w in words])


def _spoken(wake_word: str) -> list[str]:
    """The written words of a wake word (``hey_pi``: hey, pi), lower case."""
    return [w for w in re.split(r"[\s_\-]+", wake_word.lower()) if w]


def word_salad(wake_word: str, count: int, rng: np.random.Generator, sound_alikes: Sequence[str] = (),
               words_per_text: tuple[int, int] = (8, 24), alike_share: float = 0.04) -> list[str]:
    """``count`` texts of words drawn by their frequency in English (``vocabulary``), never the wake word or a
    word spelled with it; about ``alike_share`` of the words are ``sound_alikes``, so near misses come inside
    running speech. Without wordfreq the words are drawn evenly from the curated list."""
    spelled = "".join(_spoken(wake_word))
    vocabulary_words, frequencies = vocabulary()
    keep = [i for i, w in enumerate(vocabulary_words) if spelled not in w.replace("'", "")]
    words = [vocabulary_words[i] for i in keep]
    weights = frequencies[keep] / frequencies[keep].sum()
    alikes = [a for a in sound_alikes if spelled not in a]
    texts = []
    for _ in range(count):
        n = int(rng.integers(words_per_text[0], words_per_text[1] + 1))
        chosen = [words[i] for i in rng.choice(len(words), n, p=weights)]
        if alikes:
            for i in np.flatnonzero(rng.random(n) < alike_share):
                chosen[i] = alikes[int(rng.integers(len(alikes)))]
        texts.append(" ".join(chosen))
    return texts


def _cached_phonemes(words: Sequence[str], cache_dir: Path | None) -> list[list[str]]:
    if cache_dir is None:
        return phonemes(words)
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    key = hashlib.sha256(json.dumps([version, _VOICE, list(words)]).encode()).hexdigest()[:16]
    path = cache_dir / f"phonemes-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    found = phonemes(words)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(found).encode())
    return found


@dataclass(frozen=True)
class SoundAlike:
    word: str
    distance: float
    """Edit distance over the wake word's phoneme count."""
    how: str
    """``whole``, ``inside`` or ``across`` (a two-word phrase)."""


def _target_and_candidates(wake_word: str, words: Sequence[str] | None,
                           cache_dir: Path | None) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The wake word's phonemes, and (word, phonemes) of ``words`` (default ``vocabulary()``, in its order)
    that espeak-ng could read, leaving out the wake word's own words and any word spelled with it."""
    spoken = _spoken(wake_word)
    spelled = "".join(spoken)
    if words is None:
        words, _ = vocabulary()
    words = [w for w in dict.fromkeys(words) if spelled not in w and w not in spoken]
    sounds = _cached_phonemes(words, cache_dir)
    return phonemes([" ".join(spoken)])[0], [(w, s) for w, s in zip(words, sounds) if s]


def sound_alikes(wake_word: str, count: int, words: Sequence[str] | None = None,
                 cache_dir: Path | None = None, max_distance: float = 0.5) -> list[SoundAlike]:
    """Up to ``count`` words of ``words`` (default ``vocabulary()``) that sound most like ``wake_word``.

    ``whole`` and ``inside`` matches take turns, the closest first, none farther than
    ``max_distance``; words holding the wake word, or spelled with it, are left out.
    Raises OSError without espeak-ng.
    """
    if count <= 0:
        return []
    target, candidates = _target_and_candidates(wake_word, words, cache_dir)
    if not target:
        return []
    ranked: dict[str, list[tuple[float, str]]] = {"whole": [], "inside": []}
    for word, sounds in candidates:
        inside = phoneme_distance(target, sounds, inside=True) / len(target)
        if inside < _CONTAINS_WAKE_WORD:
            continue
        ranked["whole"].append((phoneme_distance(target, sounds) / len(target), word))
        if len(sounds) > len(target):
            ranked["inside"].append((inside, word))
    for matches in ranked.values():
        matches.sort()
    chosen: dict[str, SoundAlike] = {}
    for pair in zip_longest(ranked["whole"], ranked["inside"]):
        for how, match in zip(("whole", "inside"), pair):
            if match is None:
                continue
            distance, word = match
            if len(chosen) < count and distance <= max_distance and not any(_related(word, c) for c in chosen):
                chosen[word] = SoundAlike(word, round(distance, 3), how)
    return list(chosen.values())


def sound_alike_phrases(wake_word: str, count: int, words: Sequence[str] | None = None,
                        cache_dir: Path | None = None, max_distance: float = 0.5, min_part: int = 2,
                        candidates: int = 6) -> list[SoundAlike]:
    """Up to ``count`` two-word phrases whose junction sounds like ``wake_word`` ("came pewter").

    In running speech a wake word is most often heard across a word boundary: the end of
    one word and the start of the next. The wake word's phonemes are split at every point
    leaving at least ``min_part`` on each side; the words whose ending comes closest to
    the first part (``skip_start``) are paired with those whose beginning comes closest
    to the second (``skip_end``), ``candidates`` of each. Phrases are ranked by the summed
    distance over the wake word's phoneme count, the more frequent words first among
    equals (``vocabulary``'s order); none is farther than ``max_distance``, none so close
    that it would be the wake word itself, and no word serves in two of them. Raises
    OSError without espeak-ng.
    """
    if count <= 0:
        return []
    target, sounds = _target_and_candidates(wake_word, words, cache_dir)
    if len(target) < 2 * min_part:
        return []
    rank = {w: i for i, (w, _) in enumerate(sounds)}
    sounds = [(w, s) for w, s in sounds if len(s) > 1]  # one-phoneme words ("a", "I") would pair with anything
    found: list[tuple[float, str, str]] = []
    for split in range(min_part, len(target) - min_part + 1):
        head, tail = target[:split], target[split:]
        ends = heapq.nsmallest(candidates, ((phoneme_distance(head, s, skip_start=True), w) for w, s in sounds))
        starts = heapq.nsmallest(candidates, ((phoneme_distance(tail, s, skip_end=True), w) for w, s in sounds))
        for d1, first in ends:
            for d2, second in starts:
                found.append((round((d1 + d2) / len(target), 3), first, second))
    found.sort(key=lambda f: (f[0], rank[f[1]] + rank[f[2]]))
    chosen: list[SoundAlike] = []
    used: list[str] = []
    for distance, first, second in found:
        if len(chosen) >= count or distance > max_distance:
            break
        if distance < _CONTAINS_WAKE_WORD or any(_related(w, u) for w in (first, second) for u in used):
            continue
        used += [first, second]
        chosen.append(SoundAlike(f"{first} {second}", round(distance, 3), "across"))
    return chosen


def _related(a: str, b: str) -> bool:
    """Forms of one word ("complete", "completely", "incomplete"): one holds the other, or 6 letters start both."""
    return a in b or b in a or (len(a) >= 6 and len(b) >= 6 and a[:6] == b[:6])
