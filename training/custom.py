"""``kws-train custom``: a one-keyword wake-word bundle from a user's own recordings, in minutes.

Labels ``_silence_``, ``_unknown_``, WORD. The pieces are the 12-class machinery's:
``Corpus`` + ``EpochMaker`` (balanced, augmented epochs), ``train`` (with the base
model's convolutional weights loaded before compiling), ``quantize_int8``,
``evaluate.score``, ``kws.bundle.write_bundle`` and ``stream_eval`` for calibration.

Data:

* positives: the clips in ``samples_dir``, each cut to the window centred on its speech
  (found as ``kws record`` finds it in a file), with the recording's own background. A seeded ``holdout`` share is never
  trained on: it is the validation set (with ``keep = "best"``, it chooses the
  checkpoint), and gives the held-out figures and the calibration's false rejects. Optional synthetic clips of
  the word (``synth_clips``, ``training.synth``) join the training positives.
* ``_unknown_``: Speech Commands words (all of them; training split for training,
  validation split for validation), windows of long-form speech (``negatives``:
  files are grouped by speaker folder and a seeded half of the groups is kept for
  calibration), the user's room recording, and near misses: TTS renderings of
  parts of the word, of similar-sounding words and of two-word phrases that sound
  like it across the word boundary (``near_miss_texts``), less those said as the word itself but for
  unstressed vowels (``without_the_word``).
* ``_silence_`` and the noise mixed into clips: ``_background_noise_`` of Speech
  Commands, the ``noise`` folders and the room recording.

After training: int8, clip accuracy on the held-out split, calibration of the
threshold for ``target_fa_per_hour`` on the held-out speech and the noise (the
held-out positives at several SNRs give the false-reject rates), the bundle, and a
model card ``RUN/<name>.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

import kws
from kws.audio_file import read_audio
from kws.bundle import BACKGROUND_PREFIX, atomic_write, models_dir, write_bundle
from kws.errors import AudioError, ConfigError, KwsError
from kws.features import FeatureSettings
from training import data
from training.augment import AugmentSettings, synthetic_room_responses
from training.stream_eval import speech_levels_dbfs
from training.timing import StageTimer
from training.train import Corpus, EpochMaker, TrainSettings

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE = "kws12l"
"""The transfer base without ``--base``: the DS-CNN-L of the twelve classes (``models/kws12l-run``), chosen by the
wake-word benchmark (its runs and costs: training/wake-word-record.md); ``--base kws12m`` (DS-CNN-M) and
``--base kws12`` (DS-CNN-S) are the smaller ones."""
MIN_SAMPLES = 5
"""Fewest user clips accepted (at least one is held out)."""
MIN_WINDOW_S = 1.0
WINDOW_MARGIN_S = 0.3
"""Added to the 90th percentile of the speech lengths when choosing the window."""
SPEECH_MIN_RMS = 0.003
"""Windows of long-form speech quieter than this (pauses) are left out of ``_unknown_``."""
SALAD_TEXT_S = 5.0
"""About how long the TTS engines take to read one text of ``synth_speech_s`` (16 words)."""
NEAR_MISS_CLIP_WINDOWS = 2.0
"""Near-miss texts are rendered up to this many windows long, then cut to one window around their speech."""
DEFAULT_SMOOTHING_S = 1.2
"""A wake-word bundle's score averaging span (``CustomSettings.smoothing_s``)."""
SHORT_FILE_WINDOWS = 2.5
"""Negative files shorter than this many windows are clips: every position counts."""
DEFAULT_TRAIN = {"epochs": 45, "clips_per_class": 1000, "learning_rate": 0.001, "validation_silence": 100,
                 "keep": "last"}
"""Where ``kws-train custom`` departs from ``TrainSettings``' defaults (a small, fine-tuned problem; the
validation accuracy reaches its top within a few epochs, so the end of each round is kept, not the first
epoch at the top). 45 epochs before mining against 30 passed two screens declared before their runs (13
against 18 of 250 own held-out clips on ``alexa`` 5 to 9, 8 against 9 of 150 on seed 10 of the three words;
training/wake-word-record.md), at 1.28 times the training time (alexa 9 alone: 1372 against 1074 s)."""
DEFAULT_AUGMENT = {"speed_probability": 0.3, "reverb_probability": 0.3, "time_shift_ms": 150.0,
                   "time_masks": 2, "time_mask_frames": 5, "frequency_masks": 1, "frequency_mask_bins": 2}
"""Augmentation departing from ``AugmentSettings``' defaults (reverb: ``rir``'s responses, else made-up ones;
SpecAugment: two masks of up to 100 ms and one of up to two MFCC coefficients per example, which missed 63
against 68 of 300 held-out validation clips over six benchmark runs)."""


@dataclass(frozen=True)
class CustomSettings:
    """What ``kws-train custom`` trains on and how it finishes; ``TrainSettings`` holds the rest."""

    word: str
    """The wake word: the bundle's only keyword label (``hey_pi`` for a phrase; TTS reads ``_`` as a space)."""
    samples_dir: Path
    """Folder of the user's clips of the word (``kws record`` output: ``recordings/WORD``), any audio format."""
    speech_commands: Path | None = None
    """Speech Commands root: all its words become ``_unknown_``, its ``_background_noise_`` noise."""
    negatives: tuple[Path, ...] = ()
    """Long-form speech without the word (files or folders; a folder with ``INDEX.csv`` or LibriSpeech's
    ``*.trans.txt`` leaves out the utterances whose transcript says the word)."""
    noise: tuple[Path, ...] = ()
    """Folders of noise recordings: ``_silence_``, mixing, and calibration negatives."""
    rir: Path | None = None
    """Folder of room impulse responses for the reverb augmentation."""
    synthetic_rooms: int = 0
    """Without ``rir``: this many made-up room responses (``augment.synthetic_room_responses``) for the
    reverb (0 = no reverb without ``rir``)."""
    room: Path | None = None
    """A recording (file or folder) of the room the device will listen in: noise and ``_unknown_`` windows."""
    synth_clips: int = 0
    """Synthetic clips of the word from the installed TTS engines (training only)."""
    real_share: float = 0.5
    """With synthetic clips, the user's clips are repeated until they make up at least this share of the
    training positives (0 = no repeats). 0.75 and 0.25 each missed more of the pipeline's own held-out ``alexa``
    clips than 0.5 in a screen declared before its runs (training/wake-word-record.md)."""
    near_miss_clips: int = 0
    """TTS clips per near-miss text, as ``_unknown_``."""
    sound_alikes: int = 8
    """Near-miss texts also take this many real words that sound like the word, found by their phonemes
    (``training.phonetic``: espeak-ng, and wordfreq's 20,000 most frequent words when installed); 0 = none."""
    sound_alike_phrases: int = 4
    """And this many two-word phrases that sound like the word across the word boundary ("camp utility");
    0 = none."""
    partial_takes: int = 0
    """From each of the word's training clips (yours and the synthetic ones), this many pieces of its speech,
    beginnings and ends in turn (``PARTIAL_SPAN``), as ``_unknown_``: the word's own sounds in the voices it is
    trained on, but never the whole word; 0 = none."""
    whisper_share: float = 0.2
    """Whispered copies (``augment.whispered``) of this share of the word's training examples and of the
    ``_unknown_`` ones alike, so that a whisper is the word only when the word is whispered; 0 = none."""
    engines: tuple[str, ...] = ()
    """TTS engines for ``synth_clips`` and ``near_miss_clips``; () = every installed one."""
    holdout: float = 0.2
    """Share of the user's clips held out from training."""
    seed: int = 0
    """Seeds the split, the negatives split, the TTS jobs and (through ``TrainSettings.seed``) training."""
    window_s: float = 0.0
    """Model window; 0 = from the clips: 90th percentile of speech length + 0.3 s, at least 1 s, whole hops."""
    base: Path | None = None
    """Run folder (or ``.keras`` file) of a float model whose convolutional weights start training; None = scratch."""
    freeze_first_conv: bool = True
    """Keep the base's first convolution (and its batch norm) fixed for the whole training."""
    frozen_blocks: int = 0
    """With ``freeze_first_conv``: also keep this many of the base's depthwise-separable blocks after the first
    convolution fixed, the lower layers the base learned from thousands of voices."""
    calibration_share: float = 0.5
    """Share of each ``negatives`` path's speaker folders kept for calibration (paths with one folder: none)."""
    max_speech_windows: int = 4000
    """At most this many training windows of long-form speech."""
    max_speech_commands: int = 4000
    """At most this many Speech Commands clips for training, spread evenly over the words."""
    max_validation_unknown: int = 400
    """At most this many held-out ``_unknown_`` windows in the validation split."""
    gain_db: tuple[float, float] = (-25.0, 6.0)
    """Random gain of every training example that is not ``_silence_`` (after noise mixing), in dB: down to 25
    below the recording, for quiet speakers and microphones (a fifth of the ``alexa`` recordings have their
    speech under -30 dBFS, a few under -45). Against -10 to +6 dB it missed 54 against 63 of 300 held-out
    validation clips over the six benchmark runs it was chosen on; over all fourteen, 111 against 105 of 700:
    fewer for ``alexa``, more for words without quiet recordings, in loud noise (README)."""
    gain_to_quietest: bool = False
    """Also play each word and ``_unknown_`` example as quiet as the quietest of your training clips (the 5th
    percentile of their speech levels): an example whose speech is at L dBFS gets gains from
    min(``gain_db[0]``, quietest - L), so the range follows the levels your recordings hold."""
    unknown_per_epoch: float = 1.0
    """Each epoch draws this many times ``clips_per_class`` ``_unknown_`` examples, and that many fewer
    ``_silence_`` ones, so an epoch keeps its size (0 < x < 2; 1 = as many of each class)."""
    hard_negative_epochs: int = 5
    """After training, the windows of the training speech (and room) that the model takes most for the word are
    added to ``_unknown_`` and training goes on for this many epochs, in each of ``hard_negative_rounds``;
    0 = no mining."""
    hard_negative_rounds: int = 2
    """Rounds of mining and training on: each mines with the model as it is then, adds its windows to those of the
    rounds before and trains ``hard_negative_epochs`` more. Two rounds of 5 epochs against one of 10 (the same 40
    epochs in all) passed two screens declared before their runs (training/wake-word-record.md)."""
    hard_negative_windows: int = 1000
    """At most this many mined windows per round (the highest-scoring, one per peak)."""
    hard_negative_min_score: float = 0.05
    """Only windows whose word probability reaches this are mined."""
    hard_negative_share: float = 0.0
    """In the mining rounds, this share of each epoch's ``_unknown_`` examples is drawn from the windows mined so
    far, the rest from the other ``_unknown_`` examples; 0 = the mined windows are drawn like any other example
    (in the benchmark's runs, at most 1,000 among some 7,000 after the first mining)."""
    pseudo_speech_s: float = 0.0
    """Also mine this much pseudo-running speech: Speech Commands words (not the word) strung together without
    pauses, thousands of voices and word junctions the long-form speech lacks; 0 = none (needs speech_commands)."""
    mine_voice_shifts: tuple[float, ...] = (-3.0, 3.0)
    """Also mine the training speech played faster or slower by these semitones (pitch, formants and tempo
    together): more voices from the same speakers; () = none."""
    synth_speech_s: float = 0.0
    """Also mine about this much synthetic running speech: frequent English words (and the sound-alikes) in a
    random order, read by the installed TTS engines' voices; 0 = none."""
    target_fa_per_hour: float = 0.5
    """Calibration target: false accepts per hour on the held-out negatives."""
    smoothing_s: float = DEFAULT_SMOOTHING_S
    """The bundle's score averaging span (its detector's ``smoothing_s``), for which the threshold is calibrated.
    Longer than the 12-class model's 0.3 s: the word scores high for as long as it is whole in the window,
    a false accept mostly for a moment."""
    snrs_db: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
    """Conditions of the held-out positives in calibration (besides clean); need noise."""
    name: str = ""
    """Bundle name; empty = the word."""
    out_dir: Path = Path("models")
    """Folder of the bundle."""
    cache_dir: Path | None = None
    """Decoded Speech Commands clips are cached here between runs; None = no cache."""

    def __post_init__(self) -> None:
        word = self.word
        if not word or word != word.strip() or "/" in word or "\\" in word or word in (".", "..") \
                or word.startswith(BACKGROUND_PREFIX) or "\0" in word:
            raise ConfigError(f"--word {word!r}: give the word itself, e.g. --word computer (no slash, not "
                              f"starting with '{BACKGROUND_PREFIX}'; a phrase as hey_pi)")
        if not 0 <= self.real_share < 1:
            raise ConfigError(f"real_share {self.real_share:g}: give a share in [0, 1)")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"--holdout {self.holdout:g}: give a share between 0 and 1, e.g. 0.2")
        if min(self.synth_clips, self.near_miss_clips, self.sound_alikes, self.sound_alike_phrases,
               self.synth_speech_s, self.synthetic_rooms) < 0:
            raise ConfigError("--synth, --near-misses, sound_alikes, sound_alike_phrases, synth_speech_s and "
                              "synthetic_rooms must not be negative")
        if self.partial_takes < 0:
            raise ConfigError(f"partial_takes {self.partial_takes}: give 0 or more")
        if not 0 <= self.whisper_share <= 1:
            raise ConfigError(f"whisper_share {self.whisper_share:g}: give a share in [0, 1]")
        if self.hard_negative_epochs < 0 or self.hard_negative_windows < 0:
            raise ConfigError("--hard-negative-epochs and hard_negative_windows must not be negative")
        if not 0 < self.unknown_per_epoch < 2:
            raise ConfigError(f"unknown_per_epoch {self.unknown_per_epoch:g}: give a multiple between 0 and 2")
        if not 0 <= self.hard_negative_share < 1:
            raise ConfigError(f"hard_negative_share {self.hard_negative_share:g}: give a share in [0, 1)")
        if self.frozen_blocks < 0 or (self.frozen_blocks and not self.freeze_first_conv):
            raise ConfigError(f"frozen_blocks {self.frozen_blocks}: give 0 or more, with freeze_first_conv = true")
        if self.hard_negative_rounds < 1:
            raise ConfigError(f"hard_negative_rounds {self.hard_negative_rounds}: give 1 or more (no mining: "
                              "--hard-negative-epochs 0)")
        if self.window_s and not MIN_WINDOW_S / 2 <= self.window_s <= 3.0:
            raise ConfigError(f"--window-s {self.window_s:g}: give 0.5 to 3 seconds (0 = from the clips)")
        if not 0 <= self.calibration_share < 1:
            raise ConfigError(f"calibration_share {self.calibration_share:g}: must be in [0, 1)")
        if not 0 <= self.smoothing_s <= 3.0:
            raise ConfigError(f"--smoothing-s {self.smoothing_s:g}: give 0 to 3 seconds")
        if not self.target_fa_per_hour >= 0:
            raise ConfigError(f"--target-fa-per-hour {self.target_fa_per_hour:g}: must not be negative")
        if self.name and ("/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name {self.name!r} cannot be a file name")
        if len(self.gain_db) != 2 or self.gain_db[0] > self.gain_db[1]:
            raise ConfigError("gain_db must be a [low, high] pair")

    @property
    def bundle_name(self) -> str:
        return self.name or self.word

    @property
    def text(self) -> str:
        """How TTS says the word."""
        return re.sub(r"[_\-]+", " ", self.word).strip()

    @property
    def labels(self) -> tuple[str, ...]:
        return (data.SILENCE, data.UNKNOWN, self.word)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for key, value in values.items():
            if isinstance(value, Path):
                values[key] = str(value)
            elif isinstance(value, tuple):
                values[key] = [str(v) if isinstance(v, Path) else v for v in value]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "CustomSettings":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown custom setting(s) {', '.join(sorted(unknown))}")
        out = {}
        for key, value in values.items():
            if key in ("samples_dir", "speech_commands", "rir", "room", "base", "out_dir", "cache_dir"):
                out[key] = None if value in (None, "") else Path(value)
            elif key in ("negatives", "noise"):
                out[key] = tuple(Path(v) for v in value)
            elif key in ("engines", "gain_db", "snrs_db", "mine_voice_shifts"):
                out[key] = tuple(value)
            else:
                out[key] = value
        return cls(**out)


# --- near misses --------------------------------------------------------------------------------------------

_VOWELS = "aeiouy"
_ONSET_SWAPS = {"b": "p", "p": "b", "d": "t", "t": "d", "g": "k", "k": "g", "c": "g", "q": "g", "m": "n", "n": "m",
                "f": "v", "v": "f", "s": "z", "z": "s", "j": "ch", "l": "r", "r": "l", "w": "v", "h": "", "y": "",
                "x": "s", "ch": "j", "sh": "s", "th": "f", "st": "sp", "sp": "st", "sk": "st", "bl": "br",
                "br": "bl", "cl": "cr", "cr": "cl", "gl": "gr", "gr": "gl", "pl": "pr", "pr": "pl", "tr": "dr",
                "dr": "tr", "fl": "fr", "fr": "fl"}
_VOWEL_SWAPS = {"a": "o", "e": "a", "i": "e", "o": "u", "u": "i", "y": "i"}
COMMON_WORDS = (
    "a", "about", "after", "again", "alarm", "album", "alex", "alexander", "all", "already", "also", "always",
    "america", "and", "animal", "another", "answer", "any", "area", "around", "as", "ask", "at", "away", "back",
    "banana", "because", "before", "began", "better", "between", "big", "brother", "but", "by", "call", "came",
    "camera", "can", "car", "carry", "center", "chapter", "character", "children", "city", "close", "come",
    "comfort", "coming", "common", "community", "commuter", "company", "complete", "compose", "compute",
    "computing", "concert", "consider", "contain", "continue", "control", "copy", "corner", "could", "country",
    "cover", "day", "did", "different", "dinner", "do", "doctor", "does", "done", "door", "down", "during", "each",
    "early", "easy", "either", "end", "enough", "even", "ever", "every", "extra", "family", "far", "father",
    "fever", "finger", "first", "flower", "follow", "for", "forever", "from", "garden", "gave", "get", "give",
    "go", "good", "great", "hair", "hammer", "happy", "hard", "harvest", "have", "he", "hello", "help", "her",
    "here", "hey", "hi", "him", "his", "home", "house", "how", "hundred", "idea", "important", "in", "into", "is",
    "it", "jacket", "jar", "jars", "jarring", "java", "jelly", "jersey", "job", "just", "keep", "kind", "know",
    "large", "later", "leave", "letter", "lexicon", "light", "like", "little", "long", "look", "made", "make",
    "many", "master", "matter", "may", "me", "mean", "memory", "minute", "mister", "monster", "more", "mother",
    "much", "music", "must", "my", "name", "near", "never", "new", "next", "night", "no", "not", "now", "number",
    "of", "off", "office", "often", "okay", "old", "on", "one", "only", "open", "or", "order", "other", "our",
    "out", "over", "paper", "part", "people", "perhaps", "picture", "place", "play", "please", "point", "power",
    "quarter", "question", "quite", "rather", "really", "remember", "right", "river", "room", "said", "same",
    "saw", "say", "see", "service", "seven", "she", "should", "show", "sister", "small", "so", "some", "something",
    "sometimes", "sooner", "sorry", "start", "still", "stop", "story", "such", "summer", "sure", "system", "take",
    "teacher", "tell", "than", "that", "the", "their", "them", "then", "there", "these", "they", "thing", "think",
    "this", "those", "though", "through", "time", "to", "today", "together", "too", "under", "until", "up", "us",
    "use", "very", "vista", "want", "was", "water", "way", "we", "weather", "well", "were", "what", "when",
    "where", "which", "while", "who", "why", "will", "winter", "with", "wonder", "word", "work", "world", "would",
    "write", "year", "yes", "yesterday", "you", "your",
)
"""Curated common words: those sharing the wake word's start or end (3+ letters) are near misses."""


def syllables(word: str) -> list[str]:
    """Written syllables by a simple rule: split between vowel groups, one consonant going right."""
    word = word.lower()
    groups = [(m.start(), m.end()) for m in re.finditer(f"[{_VOWELS}]+", word)]
    if len(groups) > 1 and word.endswith("e") and groups[-1] == (len(word) - 1, len(word)) and \
            word[-2] not in _VOWELS and word[-2:] != "le":
        groups.pop()  # a silent final e ("note") is no syllable
    if len(groups) <= 1:
        return [word]
    cuts = []
    for (_, end), (start, _) in zip(groups, groups[1:]):
        between = start - end
        cuts.append(end if between <= 1 else end + 1)
    return [word[a:b] for a, b in zip([0] + cuts, cuts + [len(word)])]


def _onset(word: str) -> str:
    match = re.match(f"[^{_VOWELS}]*", word)
    return match.group(0) if match else ""


def _word_variants(word: str) -> list[str]:
    parts = syllables(word)
    out = []
    out += ["".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]  # prefixes, longest first
    out += ["".join(parts[k:]) for k in range(1, len(parts))]  # suffixes, longest first
    if len(parts) >= 3:
        out += ["".join(parts[:k] + parts[k + 1 :]) for k in range(1, len(parts) - 1)]  # a middle syllable dropped
    onset = _onset(word)
    rest = word[len(onset):]
    if onset:
        swap = _ONSET_SWAPS.get(onset, _ONSET_SWAPS.get(onset[0], "b") + onset[1:])
        out.append(swap + rest)
        out.append(("m" if onset != "m" else "b") + rest)
    else:
        out += ["h" + word, "b" + word]
    for index in (0, len(parts) - 1):  # the vowel of the first and of the last syllable altered
        syllable = parts[index]
        vowel = re.search(f"[{_VOWELS}]", syllable)
        if vowel and syllable[vowel.start()] in _VOWEL_SWAPS:
            changed = syllable[: vowel.start()] + _VOWEL_SWAPS[syllable[vowel.start()]] + syllable[vowel.start() + 1 :]
            out.append("".join(parts[:index] + [changed] + parts[index + 1 :]))
    return out


def _shared_start(a: str, b: str) -> int:
    """Letters ``a`` and ``b`` share at the start."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _common_words(words: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` of ``COMMON_WORDS`` sharing 3+ letters with the start or the end of one of ``words``,
    the closest first, starts and ends taking turns."""
    ranked = []
    for flip in (False, True):
        def shared(c: str) -> int:
            return max(_shared_start(c[::-1], w[::-1]) if flip else _shared_start(c, w) for w in words)
        ranked.append([c for n, c in sorted((-shared(c), c) for c in COMMON_WORDS if c not in words) if -n >= 3])
    out = []
    for pair in zip(*[r + [None] * (count - len(r)) for r in (ranked[0][:count], ranked[1][:count])]):
        out += [c for c in pair if c is not None and c not in out]
    return out[:count]


def near_miss_texts(word: str, max_texts: int = 16, max_common: int = 6,
                    sound_alikes: Sequence[str] = ()) -> list[str]:
    """Texts that sound like parts of ``word`` or like it, deterministic, never the word itself.

    For each written word of ``word`` (``hey_pi`` has two): its syllable prefixes and
    suffixes ("compu", "puter"), a middle syllable dropped, the first consonant swapped
    ("gomputer"), a vowel altered; each word alone of a phrase; then ``sound_alikes``
    (real words found by their phonemes, "completed"), then common words that share 3
    or more letters at the start or end ("commuter", "water"). ``max_texts`` counts
    all but the sound-alikes.
    """
    words = [w for w in re.split(r"[\s_\-]+", word.lower()) if w]
    target = " ".join(words)
    variants = []
    if len(words) > 1:
        variants += words
    for i, part in enumerate(words):
        variants += [" ".join(words[:i] + [v] + words[i + 1 :]) for v in _word_variants(part)]
    common = _common_words(words, max_common)
    texts, seen = [], {target, target.replace(" ", "")}
    alikes = [a for a in dict.fromkeys(sound_alikes) if a not in seen]
    for text in variants[: max_texts - len(common)] + alikes + common:
        if len(text.replace(" ", "")) >= 2 and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts[: max_texts + len(alikes)]


def find_sound_alikes(word: str, count: int, cache_dir: Path | None, phrases: int = 0) -> list[str]:
    """``training.phonetic.sound_alikes`` of ``word``, then its ``sound_alike_phrases``, logged; none (with
    one warning) without espeak-ng."""
    from training import phonetic

    if count <= 0 and phrases <= 0:
        return []
    try:
        found = phonetic.sound_alikes(word, count, cache_dir=cache_dir) if count > 0 else []
        found += phonetic.sound_alike_phrases(word, phrases, cache_dir=cache_dir)
    except (OSError, subprocess.SubprocessError) as error:
        _LOGGER.warning("no sound-alike near misses: %s", error)
        return []
    _LOGGER.info("sound-alike near misses of %r (phoneme distance): %s", word,
                 ", ".join(f"{a.word} {a.distance:.2f}" for a in found))
    return [a.word for a in found]


def without_the_word(word: str, texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """``texts`` less those espeak-ng says as ``word`` but for unstressed vowels (``training.phonetic.said_as_word``:
    "computar", "lexa" for "alexa"), and those left out, logged; all kept (with one warning) without espeak-ng."""
    from training import phonetic

    try:
        same = set(phonetic.said_as_word(word, texts))
    except (OSError, subprocess.SubprocessError) as error:
        _LOGGER.warning("near misses not checked against the word's own sound: %s", error)
        return list(texts), []
    if same:
        _LOGGER.info("left out of the near misses, said as %r but for unstressed vowels: %s", word, ", ".join(
            sorted(same)))
    return [t for t in texts if t not in same], [t for t in texts if t in same]


def _shown(path: str) -> str:
    """``path`` relative to the working folder when it is inside it ("models/kws12m-run"), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


# --- choosing the window ------------------------------------------------------------------------------------


def choose_window_s(voiced_s: Sequence[float], features: FeatureSettings) -> float:
    """90th percentile of the speech lengths + ``WINDOW_MARGIN_S``, at least ``MIN_WINDOW_S``, up to whole hops."""
    wanted = max(MIN_WINDOW_S, float(np.percentile(voiced_s, 90)) + WINDOW_MARGIN_S) if len(voiced_s) else MIN_WINDOW_S
    return whole_hops(wanted, features)


def whole_hops(seconds: float, features: FeatureSettings) -> float:
    hop_s = features.hop_samples / features.sample_rate_hz
    return round(math.ceil(seconds / hop_s - 1e-9) * hop_s, 6)


# --- inputs -------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Every file the run uses, split; recorded in settings.json."""

    positives_training: list[Path]
    positives_holdout: list[Path]
    voiced_s: dict[str, float]
    window_s: float
    negatives_training: list[Path] = field(default_factory=list)
    negatives_calibration: list[Path] = field(default_factory=list)
    negatives_excluded: int = 0
    noise_files: list[Path] = field(default_factory=list)
    noise_folders: list[Path] = field(default_factory=list)
    room_files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"window_s": self.window_s,
                "positives_training": [str(p) for p in self.positives_training],
                "positives_holdout": [str(p) for p in self.positives_holdout],
                "voiced_s": {k: round(v, 3) for k, v in self.voiced_s.items()},
                "negatives_training": [str(p) for p in self.negatives_training],
                "negatives_calibration": [str(p) for p in self.negatives_calibration],
                "negatives_excluded_by_transcript": self.negatives_excluded,
                "noise_files": [str(p) for p in self.noise_files],
                "room_files": [str(p) for p in self.room_files]}


def resolve_base(base: str | None) -> Path | None:
    """``--base``: ``"none"`` = from scratch (None); a run folder with ``model.keras``, a ``.keras`` file, or a
    bundle's name or path whose ``<name>-run`` folder beside it has one; None = ``DEFAULT_BASE``.

    ``kws12`` names the small base, the float Keras weights the bundled default model was quantized from
    (``models/kws12-run``); ``kws12m`` a DS-CNN-M and the default, ``kws12l``, a DS-CNN-L of the same twelve classes.
    """
    if base is not None and str(base).lower() == "none":
        return None
    path = models_dir() / f"{DEFAULT_BASE}-run" if base is None else Path(base)
    if not path.exists():  # a bundle's name or path (models/kws12): its run folder beside it
        for candidate in (Path(f"{path}-run"), models_dir() / f"{path.name}-run"):
            if candidate.is_dir():
                path = candidate
                break
    model = path if path.suffix == ".keras" else path / "model.keras"
    if not model.is_file():
        raise ConfigError(f"base model {model} not found: "
                          "pass --base RUN, a kws-train run folder with model.keras, or --base none to train from scratch")
    return path


def base_settings(base: Path) -> TrainSettings | None:
    """The base run's ``TrainSettings`` (its architecture and features), if it has a settings.json."""
    folder = base.parent if base.suffix == ".keras" else base
    path = folder / "settings.json"
    if not path.is_file():
        return None
    body = json.loads(path.read_text())
    try:
        return TrainSettings.from_dict(body["train"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: not the settings of a kws-train run ({error})") from None


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in data.AUDIO_SUFFIXES and p.is_file())


def speech_length_s(path: Path, sample_rate_hz: int) -> float:
    """Length of the clip's speech (its loudest utterance, as ``kws record`` finds it in a file)."""
    from kws.record import check_take

    audio = read_audio(path, sample_rate_hz)
    return check_take(audio, whole_file=True).voiced_s or audio.size / sample_rate_hz


DIGITAL_SILENCE = 1e-4
"""Samples below this (-80 dBFS) at the ends of a clip are padding the recorder added, not the room."""
BACKGROUND_S = 0.2
"""Length of the quietest stretch of a clip that fills its window beyond the recording."""
PARTIAL_SPAN = (0.3, 0.55)
"""A partial take keeps this share of the clip's speech (drawn at random), from its start or up to its end."""
PARTIAL_FADE_S = 0.01
"""Crossfade between the kept speech and the clip's background at a partial take's cut."""
PARTIAL_BACKGROUND_S = 0.05
"""The quietest stretch of the window, repeated, fills it where a partial take's speech is left out (a window is cut
close around the word, so a longer stretch would hold the word's onset or decay)."""


def audible_span(audio: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample of ``audio`` above ``DIGITAL_SILENCE`` ((0, 0) when none is)."""
    loud = np.flatnonzero(np.abs(audio) >= DIGITAL_SILENCE)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def quietest_stretch(audio: np.ndarray, samples: int) -> np.ndarray:
    """The ``samples`` of ``audio`` with the lowest energy (all of it when shorter): its background."""
    if audio.size <= samples:
        return audio
    energy = np.convolve(np.square(audio, dtype=np.float64), np.ones(samples), mode="valid")
    start = int(np.argmin(energy[:: samples // 4])) * (samples // 4)
    return audio[start : start + samples]


def clip_window(path: Path, samples: int, sample_rate_hz: int) -> np.ndarray:
    """``samples`` of the clip centred on its speech, with the clip's own background around it.

    The recording's background, not digital silence, surrounds the word, as it will when
    the model listens: where the window reaches past the recording, or into the digital
    zeros some recorders pad a file with, it holds the clip's quietest stretch, repeated.
    (A model trained on zero-padded positives learns that digital silence means the word.)
    """
    from kws.record import check_take

    audio = read_audio(path, sample_rate_hz)
    found = check_take(audio, whole_file=True)
    centre = round(found.speech_centre_s * sample_rate_hz) if found.voiced_s else audio.size // 2
    start = centre - samples // 2
    first, last = audible_span(audio)
    background = quietest_stretch(audio[first:last], int(BACKGROUND_S * sample_rate_hz))
    out = np.resize(background, samples).astype(np.float32) if background.size else np.zeros(samples, np.float32)
    lo, hi = max(first, start), min(last, start + samples)
    if hi > lo:
        out[lo - start : hi - start] = audio[lo:hi]
    return out


def partial_takes(clips: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` pieces of each window of ``clips`` (int16): a beginning, an end, a beginning ... of its speech, each
    ``PARTIAL_SPAN`` of it where it was in the window, the rest of the window the clip's own background."""
    from kws.record import check_take

    rate = data.SAMPLE_RATE_HZ
    fade = max(1, round(PARTIAL_FADE_S * rate))
    out = []
    for clip in clips.astype(np.float32) / 32768:
        found = check_take(clip, whole_file=True)
        if not found.voiced_s:
            continue
        first = max(0, round((found.speech_centre_s - found.voiced_s / 2) * rate))
        last = min(clip.size, first + round(found.voiced_s * rate))
        background = np.resize(quietest_stretch(clip, int(PARTIAL_BACKGROUND_S * rate)), clip.size)
        for piece in range(count):
            kept = round(rng.uniform(*PARTIAL_SPAN) * (last - first))
            cut = first + kept if piece % 2 == 0 else last - kept
            keep = np.clip((np.arange(clip.size) - cut) / fade + 0.5, 0.0, 1.0)  # 0 before the cut, 1 after
            if piece % 2 == 0:
                keep = 1.0 - keep
            out.append(clip * keep + background * (1.0 - keep))
    return _to_int16(np.stack(out)) if out else np.zeros((0, clips.shape[1]), np.int16)


def gather_inputs(settings: CustomSettings, features: FeatureSettings) -> Inputs:
    """Check and list every input; split positives and negatives. Reads the user's clips (to time them)."""
    folder = settings.samples_dir
    if not folder.is_dir():
        raise ConfigError(f"samples folder {folder} not found: record the word with kws record --word "
                          f"{settings.word} (it writes recordings/{settings.word}/) and pass --samples recordings/{settings.word}")
    files = _audio_files(folder)
    if len(files) < MIN_SAMPLES:
        raise ConfigError(f"samples folder {folder} holds {len(files)} audio clip(s); at least {MIN_SAMPLES} are needed "
                          "(about 50 give a usable model): record more with kws record")
    voiced = {}
    for path in files:
        try:
            voiced[str(path)] = speech_length_s(path, features.sample_rate_hz)
        except AudioError as error:
            raise ConfigError(f"sample {path} cannot be read ({error}): remove it or re-record it") from None
    rng = np.random.default_rng([settings.seed, 1])
    held = max(1, int(round(settings.holdout * len(files))))
    if held >= len(files):
        raise ConfigError(f"--holdout {settings.holdout:g} leaves no clip of {len(files)} for training")
    order = rng.permutation(len(files))
    holdout = sorted(files[i] for i in order[:held])
    training = sorted(files[i] for i in order[held:])
    window_s = whole_hops(settings.window_s, features) if settings.window_s else \
        choose_window_s([voiced[str(p)] for p in training], features)
    inputs = Inputs(training, holdout, voiced, window_s)

    if settings.speech_commands is not None:
        data.scan_speech_commands(settings.speech_commands)  # checks the folder; raises DataError (one line)
        inputs.noise_files += data.noise_files(settings.speech_commands)
        if data.noise_files(settings.speech_commands):
            inputs.noise_folders.append(settings.speech_commands / data.NOISE_DIR)
    for path in settings.noise:
        if not path.is_dir() or not _audio_files(path):
            raise ConfigError(f"noise folder {path} not found or without audio files")
        inputs.noise_files += _audio_files(path)
        inputs.noise_folders.append(path)
    if settings.rir is not None and (not settings.rir.is_dir() or not _audio_files(settings.rir)):
        raise ConfigError(f"--rir {settings.rir}: not a folder of impulse responses")
    if settings.room is not None:
        if not settings.room.exists():
            raise ConfigError(f"--room {settings.room} not found: record your room with arecord or give a folder")
        inputs.room_files = [settings.room] if settings.room.is_file() else _audio_files(settings.room)
        if not inputs.room_files:
            raise ConfigError(f"--room {settings.room} holds no audio files")
    if settings.negatives:
        _split_negatives(settings, inputs)
    if settings.speech_commands is None and not inputs.negatives_training and not settings.room \
            and not settings.near_miss_clips:
        raise ConfigError("no _unknown_ examples: pass --speech-commands ROOT and/or --negatives PATH (speech without "
                          "the word)")
    if not inputs.negatives_calibration and not inputs.noise_files:
        raise ConfigError("nothing to calibrate on: pass --negatives with a folder of several speakers (e.g. "
                          "LibriSpeech), --noise DIR, or --speech-commands ROOT (its _background_noise_)")
    return inputs


def _split_negatives(settings: CustomSettings, inputs: Inputs) -> None:
    """Group each path's files by their first folder under it (a speaker in LibriSpeech); hold out a share."""
    from training import stream_eval as se

    for path in settings.negatives:
        listing = se.negative_files([path], (settings.word,))  # INDEX.csv: utterances without the word
        inputs.negatives_excluded += listing.excluded
        groups: dict[str, list[Path]] = {}
        for file in listing.files:
            relative = file.relative_to(path).parts if path.is_dir() else ()
            groups.setdefault(relative[0] if len(relative) > 1 else ".", []).append(file)
        names = sorted(groups)
        held = int(len(names) * settings.calibration_share) if len(names) > 1 else 0
        rng = np.random.default_rng([settings.seed, 2, len(names)])
        calibration = {names[i] for i in rng.permutation(len(names))[:held]}
        for name in names:
            (inputs.negatives_calibration if name in calibration else inputs.negatives_training).extend(groups[name])
        _LOGGER.info("%s: %d file(s) in %d folder(s); %d folder(s) held out for calibration", path,
                     len(listing.files), len(names), held)


# --- the corpus ---------------------------------------------------------------------------------------------


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def centred(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` centred in ``samples`` (zero-padded both sides, or its middle cut)."""
    if audio.size >= samples:
        start = (audio.size - samples) // 2
        return audio[start : start + samples]
    out = np.zeros(samples, audio.dtype)
    start = (samples - audio.size) // 2
    out[start : start + audio.size] = audio
    return out


def speech_windows(files: Sequence[Path], samples: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` windows of ``files`` (in a seeded order), up to ``limit``.

    Long files give non-overlapping windows without pauses; clips shorter than
    ``SHORT_FILE_WINDOWS`` windows (such as ``kws listen --save-detections`` captures,
    2 s around what fired) give windows every quarter window, whatever their level.
    """
    windows: list[np.ndarray] = []
    for i in rng.permutation(len(files)):
        if len(windows) >= limit:
            break
        try:
            audio = read_audio(files[i], data.SAMPLE_RATE_HZ)
        except AudioError as error:
            _LOGGER.warning("skipped negative %s: %s", files[i], error)
            continue
        if audio.size < SHORT_FILE_WINDOWS * samples:  # a clip (e.g. a saved false activation): every position
            if audio.size < samples:
                audio = centred(audio, samples)
            windows += [_to_int16(audio[s : s + samples]) for s in range(0, audio.size - samples + 1, samples // 4)]
            continue
        offset = int(rng.integers(samples // 2 + 1))
        for start in range(offset, audio.size - samples + 1, samples):
            window = audio[start : start + samples]
            if np.sqrt(np.mean(window.astype(np.float64) ** 2)) >= SPEECH_MIN_RMS:
                windows.append(_to_int16(window))
    return np.stack(windows[:limit]) if windows else np.zeros((0, samples), np.int16)


def speech_commands_clips(root: Path, word: str, limit: int, rng: np.random.Generator) -> tuple[list, list]:
    """Training and validation clips of every Speech Commands word but ``word``: at most ``limit`` for training."""
    clips = [c for c in data.scan_speech_commands(root) if c.split != "testing" and c.word.lower() != word.lower()]
    training = [c for c in clips if c.split == "training"]
    by_word: dict[str, list] = {}
    for clip in training:
        by_word.setdefault(clip.word, []).append(clip)
    share = max(1, limit // max(1, len(by_word)))
    chosen = []
    for name in sorted(by_word):
        pool = by_word[name]
        chosen += [pool[i] for i in sorted(rng.permutation(len(pool))[:share])]
    return chosen, [c for c in clips if c.split == "validation"]


TTS_BACKGROUND_DBFS = (-65.0, -45.0)
"""RMS range of the room noise put under synthetic clips."""


def with_background(clips: np.ndarray, noise: Sequence[np.ndarray], rng: np.random.Generator,
                    level_dbfs: tuple[float, float] = TTS_BACKGROUND_DBFS) -> np.ndarray:
    """``clips`` (float) with a quiet cut of ``noise`` under each, at a random RMS in ``level_dbfs``.

    Text-to-speech renders the word between digital zeros; a model trained on that learns
    that digital silence goes with the word, and fires where a stream falls silent (the
    end of a file, a muted microphone). Without noise recordings, a white-noise floor.
    """
    from training.augment import random_noise_cuts

    if not len(clips):
        return clips
    cuts = random_noise_cuts(noise, len(clips), clips.shape[1], rng) if noise else \
        rng.standard_normal(clips.shape).astype(np.float32)
    level = 10 ** (rng.uniform(*level_dbfs, size=len(clips)) / 20)
    return np.clip(clips + cuts * level[:, None].astype(np.float32), -1.0, 1.0)


class GainEpochs(EpochMaker):
    """``EpochMaker`` plus a random gain on every example that is not ``_silence_`` (a quieter or louder speaker).

    With ``quietest_dbfs``, an example's lowest gain is also low enough to bring its speech down to that level.
    """

    def __init__(self, corpus: Corpus, settings: TrainSettings, gain_db: tuple[float, float],
                 quietest_dbfs: float | None = None, mined: np.ndarray | None = None, mined_share: float = 0.0,
                 unknown_per_epoch: float = 1.0):
        super().__init__(corpus, settings)
        self.unknown_per_epoch = unknown_per_epoch
        self.gain_db = gain_db
        self.quietest_dbfs = quietest_dbfs
        self.unknown = corpus.labels.index(data.UNKNOWN)
        training = self.by_class[self.unknown]
        self.mined = np.intersect1d(mined, training) if mined is not None and mined_share else training[:0]
        self.mined_share = mined_share
        self.not_mined = np.setdiff1d(training, self.mined)

    @classmethod
    def of(cls, corpus: Corpus, settings: TrainSettings, custom: CustomSettings, quietest_dbfs: float | None,
           mined: np.ndarray | None = None) -> "GainEpochs":
        """The epochs ``custom`` asks for (its gains, ``hard_negative_share`` of ``mined``, ``unknown_per_epoch``)."""
        return cls(corpus, settings, custom.gain_db, quietest_dbfs, mined, custom.hard_negative_share,
                   custom.unknown_per_epoch)

    def count(self, k: int) -> int:
        """``unknown_per_epoch`` times ``per_class`` of ``_unknown_``; ``_silence_`` makes up the difference."""
        extra = int(round(self.per_class * (self.unknown_per_epoch - 1)))
        return self.per_class + (extra if k == self.unknown else -extra if k == self.silence else 0)

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``EpochMaker.draw``, but ``mined_share`` of ``_unknown_``'s rows from ``mined`` (with replacement only
        if it has fewer), the rest from its other rows."""
        if k != self.unknown or not len(self.mined) or not len(self.not_mined):
            return super().draw(k, rng)
        total = self.count(k)
        count = int(round(total * self.mined_share))
        return np.concatenate([
            rng.choice(self.mined, count, replace=len(self.mined) < count),
            rng.choice(self.not_mined, total - count, replace=len(self.not_mined) < total - count)])

    def epoch_audio(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        audio, labels = super().epoch_audio(rng)
        low = np.full(len(audio), self.gain_db[0])
        if self.quietest_dbfs is not None:
            low = np.minimum(low, self.quietest_dbfs - speech_levels_dbfs(audio, data.SAMPLE_RATE_HZ))
        elif self.gain_db[0] == self.gain_db[1] == 0:
            return audio, labels
        gain = 10 ** (rng.uniform(low, self.gain_db[1]) / 20)
        gain = np.where(labels == self.silence, 1.0, gain).astype(np.float32)
        return np.clip(audio * gain[:, None], -1.0, 1.0), labels


def render_tts(settings: CustomSettings, words: Sequence[str], clips_per_word: int, out_dir: Path,
               window_s: float, seed_offset: int) -> dict[str, list[Path]]:
    """Clips of ``words`` rendered (and cached in ``out_dir``) by ``training.synth``; {} without a TTS engine."""
    from training import synth

    engines = settings.engines or synth.ENGINE_NAMES
    if not synth.available_engines() or not set(engines) & set(synth.available_engines()):
        return {}
    jobs = synth.SynthSettings(words=tuple(words), out_dir=out_dir, clips_per_word=clips_per_word,
                               seed=settings.seed + seed_offset, engines=tuple(engines), clip_s=window_s)
    paths = synth.synthesize(jobs)
    found: dict[str, list[Path]] = {}
    for path in paths:
        found.setdefault(path.parent.name, []).append(path)
    return found


@dataclass
class CorpusParts:
    """How many examples each source gave (for the model card)."""

    counts: dict = field(default_factory=dict)
    near_miss_texts: list = field(default_factory=list)
    quietest_dbfs: float | None = None
    """With ``gain_to_quietest``: the 5th percentile of the speech levels of the user's training clips."""
    said_as_word: list = field(default_factory=list)
    """Near-miss texts left out: said as the word but for unstressed vowels."""
    sound_alikes: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def build_corpus(settings: CustomSettings, inputs: Inputs, run_dir: Path, timer: StageTimer) -> tuple[Corpus, CorpusParts]:
    """The three-class corpus: rows of window-length int16 audio with labels and splits."""
    samples = int(round(inputs.window_s * data.SAMPLE_RATE_HZ))
    labels = settings.labels
    silence, unknown, keyword = range(3)
    rows, label, split = [], [], []
    parts = CorpusParts()

    def add(audio: np.ndarray, k: int, where: str, what: str) -> None:
        if len(audio):
            rows.append(audio)
            label.append(np.full(len(audio), k))
            split.append(np.full(len(audio), where))
        parts.counts[what] = parts.counts.get(what, 0) + len(audio)

    with timer.stage("decode audio"):
        yours, held_out = (np.stack([_to_int16(clip_window(p, samples, data.SAMPLE_RATE_HZ)) for p in paths])
                           for paths in (inputs.positives_training, inputs.positives_holdout))
        add(yours, keyword, "training", "positives (yours)")
        if settings.gain_to_quietest and len(yours):
            parts.quietest_dbfs = round(float(np.percentile(
                speech_levels_dbfs(yours.astype(np.float32) / 32768, data.SAMPLE_RATE_HZ), 5)), 1)
        add(held_out, keyword, "validation", "held-out positives")
        rng = np.random.default_rng([settings.seed, 3])
        if settings.speech_commands is not None:
            training, validation = speech_commands_clips(settings.speech_commands, settings.word,
                                                         settings.max_speech_commands, rng)
            validation = [validation[i] for i in sorted(rng.permutation(len(validation))[:settings.max_validation_unknown // 2])]
            for clips, where, what in ((training, "training", "Speech Commands words"),
                                       (validation, "validation", "Speech Commands words (validation)")):
                audio = data.decode_clips([c.path for c in clips], settings.cache_dir)
                add(np.stack([centred(a, samples) for a in audio]) if len(audio) else audio[:, :samples], unknown,
                    where, what)
        if inputs.negatives_training:
            add(speech_windows(inputs.negatives_training, samples, settings.max_speech_windows, rng), unknown,
                "training", "speech windows")
        if inputs.negatives_calibration:
            add(speech_windows(inputs.negatives_calibration, samples, settings.max_validation_unknown // 2, rng),
                unknown, "validation", "speech windows (validation)")
        room = [read_audio(p, data.SAMPLE_RATE_HZ) for p in inputs.room_files]
        if room:
            windows = [_to_int16(a[s : s + samples]) for a in room for s in range(0, a.size - samples + 1, samples)]
            add(np.stack(windows) if windows else np.zeros((0, samples), np.int16), unknown, "training", "room windows")
        noise = data.load_noise(inputs.noise_files) + room
        responses = data.load_noise(_audio_files(settings.rir)) if settings.rir else \
            synthetic_room_responses(settings.synthetic_rooms, data.SAMPLE_RATE_HZ,
                                     np.random.default_rng([settings.seed, 7]))

    def add_tts(texts, clips, folder, seed, label_index, what, option, clip_s=None):
        """``clip_s`` longer than the window: renderings up to that long, cut to the window around their speech."""
        with timer.stage(f"synthesize ({what})"):
            found = render_tts(settings, texts, clips, run_dir / folder, clip_s or inputs.window_s, seed)
        if not found:
            parts.notes.append(f"{option}: no TTS engine installed (apt-get install espeak-ng flite festival): "
                               f"no {what}")
            _LOGGER.warning("%s", parts.notes[-1])
        paths = [p for ps in found.values() for p in ps]
        cut = (lambda p: clip_window(p, samples, data.SAMPLE_RATE_HZ)) if clip_s else \
            (lambda p: centred(read_audio(p, data.SAMPLE_RATE_HZ), samples))
        clips = np.stack([cut(p) for p in paths]) if paths else np.zeros((0, samples), np.float32)
        mixed = _to_int16(with_background(clips, noise, np.random.default_rng([settings.seed, 4, seed])))
        add(mixed, label_index, "training", what)
        return mixed

    synthetic_words = np.zeros((0, samples), np.int16)
    if settings.synth_clips:
        synthetic_words = add_tts([settings.text], settings.synth_clips, "synth", 0, keyword, "synthetic positives",
                                  "--synth")
        synthetic = parts.counts["synthetic positives"]
        copies = math.ceil(settings.real_share / (1 - settings.real_share) * synthetic / len(yours)) - 1 \
            if settings.real_share > 0 else 0
        if copies > 0:  # the user's voice, not the TTS voices, is what the model must learn
            add(np.tile(yours, (copies, 1)), keyword, "training", "positives (yours, repeated)")
    if settings.near_miss_clips:
        parts.sound_alikes = find_sound_alikes(settings.word, settings.sound_alikes, settings.cache_dir,
                                               settings.sound_alike_phrases)
        parts.near_miss_texts, parts.said_as_word = without_the_word(
            settings.word, near_miss_texts(settings.word, sound_alikes=parts.sound_alikes))
        # Long near misses ("compatibility", "camp utility") are kept: their middle is what sounds like the word.
        add_tts(parts.near_miss_texts, settings.near_miss_clips, "near_misses", 1, unknown, "near misses",
                "--near-misses", NEAR_MISS_CLIP_WINDOWS * inputs.window_s)
    if settings.partial_takes:
        with timer.stage("partial takes"):
            add(partial_takes(np.concatenate([yours, synthetic_words]), settings.partial_takes,
                              np.random.default_rng([settings.seed, 10])), unknown, "training", "partial takes")
    if settings.whisper_share:
        from training.augment import whispered

        rng = np.random.default_rng([settings.seed, 9])
        with timer.stage("whisper"):
            for k, what in ((keyword, "whispered positives"), (unknown, "whispered _unknown_")):
                pool = np.concatenate([r for r, l, s in zip(rows, label, split) if l[0] == k and s[0] == "training"])
                chosen = rng.permutation(len(pool))[: int(round(settings.whisper_share * len(pool)))]
                for part in np.array_split(chosen, max(1, len(chosen) // 500)):
                    add(_to_int16(whispered(pool[np.sort(part)], rng)), k, "training", what)

    corpus = Corpus(np.concatenate(rows), np.concatenate(label).astype(np.int64), np.concatenate(split), noise,
                    labels=labels, responses=responses)
    if not len(corpus.indices("training", unknown)):
        raise ConfigError("no _unknown_ training examples were found: give --speech-commands or --negatives")
    if not noise:
        _LOGGER.warning("no noise recordings: _silence_ examples are digital silence; pass --speech-commands or --noise")
    _LOGGER.info("corpus: %s", ", ".join(f"{n} {what}" for what, n in parts.counts.items()))
    return corpus, parts


# --- hard negatives -----------------------------------------------------------------------------------------


def pseudo_speech(clips: np.ndarray, seconds: float, rng: np.random.Generator, sample_rate_hz: int,
                  stream_s: float = 30.0) -> list[np.ndarray]:
    """Float streams of about ``stream_s`` of ``clips`` (int16 words) cut to their speech (as ``kws record`` cuts a
    file) and strung together in a random order without pauses, ``seconds`` in all."""
    from kws.record import check_take

    streams: list[np.ndarray] = []
    stream: list[np.ndarray] = []
    total = length = 0
    while len(clips) and total < seconds * sample_rate_hz:
        for i in rng.permutation(len(clips)):
            part = check_take(clips[i].astype(np.float32) / 32768, whole_file=True).trimmed
            stream.append(part)
            length += part.size
            total += part.size
            if length >= stream_s * sample_rate_hz:
                streams.append(np.concatenate(stream))
                stream, length = [], 0
            if total >= seconds * sample_rate_hz:
                break
    if stream:
        streams.append(np.concatenate(stream))
    return streams


def shift_voice(audio: np.ndarray, semitones: float) -> np.ndarray:
    """``audio`` played ``2 ** (semitones / 12)`` times faster: pitch, formants and tempo move together."""
    from training.synth import resample

    return resample(audio, data.SAMPLE_RATE_HZ * 2 ** (semitones / 12), data.SAMPLE_RATE_HZ)


def mine_hard_negatives(model, files: Sequence[Path | np.ndarray], samples: int, features: FeatureSettings, keyword: int,
                        limit: int, min_score: float, stride_s: float = 0.2, batch_windows: int = 8192,
                        names: Sequence[str] = ()) -> tuple[np.ndarray, list[dict]]:
    """The windows of ``files`` (paths, or float audio) that ``model`` scores highest for class ``keyword``: int16
    ``(n, samples)``.

    Each file is cut into windows every ``stride_s`` (features computed once per file,
    scored in batches of about ``batch_windows`` over files); of each run of windows
    above ``min_score`` only the highest is kept, then the ``limit`` highest over all
    files. Also returns where each came from (``names``, one per file, name them; else the
    path, or ``audio N`` for an array).
    """
    from kws.features import Mfcc
    from training.evaluate import predict_float

    mfcc = Mfcc(features)
    frames = features.frames_for(samples)
    hop = features.hop_samples
    stride = max(1, int(round(stride_s * features.sample_rate_hz / hop)))
    found: list[tuple[float, int, int]] = []  # (score, file index, first sample)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (file index, first frames, windows)

    def score_pending() -> None:
        windows = np.concatenate([w for _, _, w in pending])
        scores = predict_float(model, windows, 1024)[:, keyword]
        at = 0
        for index, starts, w in pending:
            own = scores[at : at + len(w)]
            at += len(w)
            peaks: list[tuple[float, int]] = []
            for i in np.flatnonzero(own >= min_score):  # one per run: a run's windows overlap the same sound
                if peaks and i - peaks[-1][1] <= frames // stride:
                    if own[i] > peaks[-1][0]:
                        peaks[-1] = (float(own[i]), i)
                    continue
                peaks.append((float(own[i]), i))
            found.extend((score, index, int(starts[i]) * hop) for score, i in peaks)
        pending.clear()

    def load(source) -> np.ndarray:
        return source if isinstance(source, np.ndarray) else read_audio(source, features.sample_rate_hz)

    waiting = 0  # windows in pending
    for index, path in enumerate(files):
        try:
            audio = load(path)
        except AudioError as error:
            _LOGGER.warning("skipped negative %s: %s", path, error)
            continue
        if audio.size < samples:
            continue
        feats = mfcc.compute(audio)
        starts = np.arange(0, len(feats) - frames + 1, stride)
        pending.append((index, starts, np.stack([feats[s : s + frames] for s in starts])))
        waiting += len(starts)
        if waiting >= batch_windows:
            score_pending()
            waiting = 0
    if pending:
        score_pending()
    found.sort(reverse=True)
    found = found[:limit]
    windows = []
    for _, index, start in found:  # read again: only the files with a mined window
        cut = load(files[index])[start : start + samples]
        windows.append(_to_int16(np.pad(cut, (0, samples - cut.size))))
    where = [{"file": names[i] if names else f"audio {i}" if isinstance(files[i], np.ndarray) else str(files[i]),
              "start_s": round(start / features.sample_rate_hz, 2), "score": round(score, 3)}
             for score, i, start in found]
    out = np.stack(windows) if windows else np.zeros((0, samples), np.int16)
    return out, where


def with_hard_negatives(corpus: Corpus, windows: np.ndarray) -> Corpus:
    """``corpus`` with ``windows`` added as ``_unknown_`` training rows."""
    unknown = corpus.labels.index(data.UNKNOWN)
    return dataclasses.replace(
        corpus, audio=np.concatenate([corpus.audio, windows]),
        label=np.concatenate([corpus.label, np.full(len(windows), unknown, corpus.label.dtype)]),
        split=np.concatenate([corpus.split, np.full(len(windows), "training", corpus.split.dtype)]))


# --- transfer -----------------------------------------------------------------------------------------------


def freeze_lower_layers(model, blocks: int = 0) -> None:
    """Keep ``model``'s first convolution, its batch norm and the ``blocks`` depthwise-separable blocks after it as
    they are (set before compiling)."""
    from keras import layers

    weighted = [l for l in model.layers if l.weights and not isinstance(l, layers.Dense)]
    fixed = 2 + 4 * blocks  # the convolution and its batch norm; per block depthwise, norm, pointwise, norm
    if fixed > len(weighted):
        raise ConfigError(f"frozen_blocks {blocks}: the model has only {(len(weighted) - 2) // 4} blocks")
    for layer in weighted[:fixed]:
        layer.trainable = False


def transfer_weights(model, base_model, freeze_first_conv: bool, frozen_blocks: int = 0) -> list[str]:
    """Copy every layer's weights but the dense classifier's from ``base_model``; names of the copied layers.

    DS-CNN pools globally before its dense layer, so the convolutional weights fit any
    window length. With ``freeze_first_conv`` the first convolution and its batch norm
    (and the first ``frozen_blocks`` blocks) stay as the base has them.
    """
    from keras import layers

    own = [l for l in model.layers if l.weights and not isinstance(l, layers.Dense)]
    theirs = [l for l in base_model.layers if l.weights and not isinstance(l, layers.Dense)]
    if len(own) != len(theirs):
        raise ConfigError(f"the base model has {len(theirs)} weighted layers before its classifier, this one "
                          f"{len(own)}: train with the base's architecture")
    copied = []
    for mine, source in zip(own, theirs):
        shapes = [tuple(w.shape) for w in mine.get_weights()], [tuple(w.shape) for w in source.get_weights()]
        if type(mine) is not type(source) or shapes[0] != shapes[1]:
            raise ConfigError(f"base layer {source.name} ({type(source).__name__} {shapes[1]}) does not fit layer "
                              f"{mine.name} ({type(mine).__name__} {shapes[0]}): use a base with the same "
                              "architecture and feature settings")
        mine.set_weights(source.get_weights())
        copied.append(mine.name)
    if freeze_first_conv:
        freeze_lower_layers(model, frozen_blocks)
    return copied


# --- the whole job ------------------------------------------------------------------------------------------


def save_settings(run_dir: Path, settings: CustomSettings, train_settings: TrainSettings, inputs: Inputs,
                  parts: CorpusParts | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    body = {"kind": "custom", "custom": settings.to_dict(), "train": train_settings.to_dict(),
            "labels": list(settings.labels), "split": inputs.to_dict(),
            "near_miss_texts": parts.near_miss_texts if parts else [],
            "near_misses_said_as_word": parts.said_as_word if parts else [],
            "examples": parts.counts if parts else {}, "kws_version": kws.__version__}
    atomic_write(run_dir / "settings.json", (json.dumps(body, indent=2) + "\n").encode())


def _representative(corpus: Corpus, train_settings: TrainSettings, count: int = 300) -> np.ndarray:
    per_class = max(1, -(-count // len(corpus.labels)))
    maker = EpochMaker(corpus, dataclasses.replace(train_settings, clips_per_class=per_class))
    windows, _ = maker.epoch(np.random.default_rng(train_settings.seed + 1))
    return windows[:count]


def run_custom(run_dir: Path, settings: CustomSettings, train_settings: TrainSettings,
               timer: StageTimer | None = None) -> dict:
    """Train, quantize, evaluate, export and calibrate; returns the figures of the model card."""
    from training.evaluate import predict_float, predict_tflite, report, save_confusion, score
    from training.quantize import quantize_int8
    from training.train import train

    timer = timer or StageTimer()
    started = time.perf_counter()
    base = settings.base
    if base is not None:
        found = base_settings(base)
        if found is not None:
            train_settings = dataclasses.replace(train_settings, architecture=found.architecture,
                                                 features=found.features)
    with timer.stage("scan"):
        inputs = gather_inputs(settings, train_settings.features)
    _LOGGER.info("%d clips for training, %d held out; window %.2f s", len(inputs.positives_training),
                 len(inputs.positives_holdout), inputs.window_s)
    save_settings(run_dir, settings, train_settings, inputs)
    corpus, parts = build_corpus(settings, inputs, run_dir, timer)
    save_settings(run_dir, settings, train_settings, inputs, parts)

    copied: list[str] = []

    def prepare(model) -> None:
        if base is None:
            return
        import keras

        base_model = keras.models.load_model(base if base.suffix == ".keras" else base / "model.keras")
        copied.extend(transfer_weights(model, base_model, settings.freeze_first_conv, settings.frozen_blocks))
        _LOGGER.info("initialised %d layers from %s%s; the classifier is new", len(copied), base,
                     _frozen_text(settings, " (first convolution%s frozen)"))

    quietest = parts.quietest_dbfs
    maker = GainEpochs.of(corpus, train_settings, settings, quietest)
    train_started = time.perf_counter()
    model = train(corpus, train_settings, run_dir, timer, maker=maker, prepare_model=prepare)
    mined = []
    mining_files = list(inputs.negatives_training) + list(inputs.room_files)
    if settings.hard_negative_epochs and settings.hard_negative_windows and mining_files:
        extra = extra_mining_audio(settings, inputs, run_dir, timer, parts.sound_alikes)
        first_mined = len(corpus.audio)  # every round appends its windows to the corpus
        for number in range(2, settings.hard_negative_rounds + 2):
            model, corpus, maker, found = hard_negative_round(model, corpus, settings, train_settings, mining_files,
                                                              extra, run_dir, timer, quietest, number, first_mined)
            if not found:  # nothing to train on: the model did not change, so neither would a next mining
                break
            mined += found
        parts.counts["hard negatives (mined)"] = len(mined)
    train_s = time.perf_counter() - train_started

    with timer.stage("quantize"):
        content = quantize_int8(model, _representative(corpus, train_settings), train_settings.features)
    atomic_write(run_dir / "model_int8.tflite", content)

    with timer.stage("evaluate"):
        features, truth = maker.validation()
        evaluation = {}
        for kind, predict in (("float", lambda f: predict_float(model, f)),
                              ("int8", lambda f: predict_tflite(content, f))):
            scores = score(corpus.labels, truth, predict(features).argmax(axis=1))
            print(report(f"held-out {kind}", scores))
            evaluation[kind] = scores.to_dict()
        save_confusion(scores, f"held out, int8: accuracy {scores.accuracy:.4f}", run_dir / "confusion_holdout_int8.png")
    atomic_write(run_dir / "evaluation.json", (json.dumps({"holdout": evaluation}, indent=1) + "\n").encode())

    json_path = export(run_dir, settings, train_settings, inputs, model, content, evaluation, copied)
    with timer.stage("calibrate"):
        calibration = calibrate(json_path, settings, inputs)
    figures = {"bundle": str(json_path), "word": settings.word, "window_s": inputs.window_s,
               "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - started, 1),
               "examples": parts.counts, "notes": parts.notes, "near_miss_texts": parts.near_miss_texts,
               "near_misses_said_as_word": parts.said_as_word,
               "holdout_accuracy_int8": evaluation["int8"]["accuracy"], "calibration": calibration,
               "base": str(base) if base else None, "transferred_layers": len(copied),
               "freeze_first_conv": bool(base) and settings.freeze_first_conv,
               "frozen_blocks": settings.frozen_blocks if base else 0, "epochs": train_settings.epochs,
               "spec_augment": _spec_augment_text(train_settings.augment),
               "quietest_dbfs": quietest}
    card = model_card(settings, figures)
    atomic_write(run_dir / f"{settings.bundle_name}.md", card.encode())
    atomic_write(run_dir / "figures.json", (json.dumps(figures, indent=1) + "\n").encode())
    return figures


def extra_mining_audio(settings: CustomSettings, inputs: Inputs, run_dir: Path, timer: StageTimer,
                       sound_alikes: Sequence[str] = ()) -> list[tuple[str, np.ndarray]]:
    """(name, float audio) the miner reads beside the training negatives' files: the pseudo-speech
    (``pseudo_speech_s``), the training speech with shifted voices (``mine_voice_shifts``) and the synthetic
    running speech (``synth_speech_s``, with ``sound_alikes`` among its words)."""
    extra: list[tuple[str, np.ndarray]] = []
    if settings.pseudo_speech_s > 0 and settings.speech_commands is not None:
        with timer.stage("pseudo speech"):
            rng = np.random.default_rng([settings.seed, 5])
            clips, _ = speech_commands_clips(settings.speech_commands, settings.word, 10 ** 9, rng)
            words = data.decode_clips([c.path for c in clips], settings.cache_dir)
            streams = pseudo_speech(words, settings.pseudo_speech_s, rng, data.SAMPLE_RATE_HZ)
        _LOGGER.info("mining also %d stream(s) of pseudo-speech (%.0f s) from %d Speech Commands words",
                     len(streams), sum(a.size for a in streams) / data.SAMPLE_RATE_HZ, len(words))
        extra += [(f"pseudo-speech {i}", audio) for i, audio in enumerate(streams)]
    if settings.mine_voice_shifts:
        with timer.stage("shift voices"):
            shifted = []
            for path in inputs.negatives_training:  # each file decoded once for all the shifts
                try:
                    audio = read_audio(path, data.SAMPLE_RATE_HZ)
                except AudioError:
                    continue  # the miner logs it for the original
                shifted += [(f"{path} {t:+g} semitones", shift_voice(audio, t)) for t in settings.mine_voice_shifts]
        _LOGGER.info("mining also the training speech shifted by %s semitones (%d files)",
                     ", ".join(f"{t:+g}" for t in settings.mine_voice_shifts), len(shifted))
        extra += shifted
    if settings.synth_speech_s > 0:
        from training.phonetic import word_salad
        from training.synth import ENGINE_NAMES, render_speech

        with timer.stage("synthesize (running speech)"):
            rng = np.random.default_rng([settings.seed, 6])
            texts = word_salad(settings.word, math.ceil(settings.synth_speech_s / SALAD_TEXT_S), rng, sound_alikes)
            read = render_speech(texts, (settings.cache_dir or run_dir) / "synth_speech",
                                 settings.engines or ENGINE_NAMES, settings.seed, data.SAMPLE_RATE_HZ)
        _LOGGER.info("mining also %d synthetic sentence(s) (%.0f s)", len(read),
                     sum(a.size for _, a in read) / data.SAMPLE_RATE_HZ)
        extra += [(f"synthetic speech: {text}", audio) for text, audio in read]
    return extra


def hard_negative_round(model, corpus: Corpus, settings: CustomSettings, train_settings: TrainSettings,
                        files: Sequence[Path], extra: Sequence[tuple[str, np.ndarray]], run_dir: Path,
                        timer: StageTimer, quietest_dbfs: float | None, number: int, first_mined: int):
    """Training round ``number`` (2 or more): mine the training negatives with ``model``, add what it takes for the
    word, and train on from it.

    Beside ``files``, the miner reads ``extra`` (``extra_mining_audio``, named float audio). The rows of ``corpus``
    from ``first_mined`` on are the windows of the rounds before; with ``hard_negative_share`` the round's epochs
    draw that share of ``_unknown_`` from them and this round's.
    The round starts from all of ``model``'s weights (the first convolution still fixed when
    ``freeze_first_conv``) at half the learning rate, for ``hard_negative_epochs``; the epoch
    ``train_settings.keep`` names is the model. Its windows are listed in ``hard_negatives.json``
    (round 2) or ``hard_negatives_roundN.json``, the round before's history moves to
    ``history_roundN-1.json``. Returns (model, corpus, maker, mined).
    """
    from training.train import train

    samples = corpus.audio.shape[1]
    names = [str(f) for f in files] + [name for name, _ in extra]
    files = [*files, *(audio for _, audio in extra)]
    with timer.stage("mine hard negatives"):
        windows, mined = mine_hard_negatives(model, files, samples, train_settings.features,
                                             corpus.labels.index(settings.word), settings.hard_negative_windows,
                                             settings.hard_negative_min_score, names=names)
    listed = "hard_negatives.json" if number == 2 else f"hard_negatives_round{number}.json"
    atomic_write(run_dir / listed, (json.dumps(mined, indent=1) + "\n").encode())
    _LOGGER.info("round %d: mined %d hard negative window(s) from %d file(s) (scores %s); training %d more epochs",
                 number, len(mined), len(files),
                 f"{mined[-1]['score']:.2f} to {mined[0]['score']:.2f}" if mined else "-",
                 settings.hard_negative_epochs)
    if not mined:
        return model, corpus, GainEpochs.of(corpus, train_settings, settings, quietest_dbfs), mined
    history = run_dir / "history.json"
    if history.exists():
        history.replace(run_dir / f"history_round{number - 1}.json")
    corpus = with_hard_negatives(corpus, windows)
    round_settings = dataclasses.replace(train_settings, epochs=settings.hard_negative_epochs,
                                         learning_rate=train_settings.learning_rate / 2)
    maker = GainEpochs.of(corpus, round_settings, settings, quietest_dbfs, np.arange(first_mined, len(corpus.audio)))
    weights = model.get_weights()

    def resume(fresh) -> None:
        fresh.set_weights(weights)
        if settings.base is not None and settings.freeze_first_conv:
            freeze_lower_layers(fresh, settings.frozen_blocks)

    if len(maker.mined):
        _LOGGER.info("round %d: %.0f%% of each epoch's _unknown_ examples from the %d window(s) mined so far",
                     number, 100 * maker.mined_share, len(maker.mined))
    model = train(corpus, round_settings, run_dir, timer, maker=maker, prepare_model=resume)
    return model, corpus, maker, mined


def export(run_dir: Path, settings: CustomSettings, train_settings: TrainSettings, inputs: Inputs, model,
           content: bytes, evaluation: dict, copied: Sequence[str]) -> Path:
    from kws.interpreter import make_interpreter
    from training.models import count_macs
    from training.run import DEFAULT_REFRACTORY_S, DEFAULT_THRESHOLD, _tensor_spec

    interpreter = make_interpreter(content)
    samples = int(round(inputs.window_s * train_settings.features.sample_rate_hz))
    manifest = {
        "description": f"{train_settings.architecture} wake word '{settings.word}' (kws-train custom), int8",
        "labels": list(settings.labels),
        "features": train_settings.features.to_dict(),
        "window_frames": train_settings.features.frames_for(samples),
        "input": _tensor_spec(interpreter.get_input_details()[0]),
        "output": _tensor_spec(interpreter.get_output_details()[0]),
        "detector": {"thresholds": {settings.word: DEFAULT_THRESHOLD}, "smoothing_s": settings.smoothing_s,
                     "refractory_s": DEFAULT_REFRACTORY_S},
        "architecture": train_settings.architecture,
        "parameters": int(model.count_params()),
        "macs": count_macs(model),
        "training": {
            "custom": settings.to_dict(),
            "settings": train_settings.to_dict(),
            "window_s": inputs.window_s,
            "run": str(run_dir),
            "base": str(settings.base) if settings.base else None,
            "transferred_layers": list(copied),
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()} {platform.python_version()}",
            "kws_version": kws.__version__,
        },
        "metrics": {"holdout": {kind: {"accuracy": body["accuracy"], "clips": body["clips"]}
                                for kind, body in evaluation.items()}},
    }
    path = write_bundle(settings.out_dir, settings.bundle_name, content, manifest)
    _LOGGER.info("exported %s", path)
    return path


def calibrate(json_path: Path, settings: CustomSettings, inputs: Inputs) -> dict:
    """Threshold for ``target_fa_per_hour`` on held-out speech + noise at ``settings.smoothing_s``, FRR of the
    held-out clips; both into the bundle."""
    from kws.bundle import load_bundle
    from kws.spotter import detector_settings_for
    from training import stream_eval as se

    bundle = load_bundle(json_path)
    scorer = se.StreamScorer(bundle)
    snrs = settings.snrs_db if inputs.noise_folders else ()
    eval_settings = se.StreamEvalSettings(snrs_db=snrs, seed=settings.seed)
    noise = se.load_noise(inputs.noise_folders, scorer.sample_rate_hz) if snrs else None
    positives = se.score_positives(scorer, inputs.positives_holdout, settings.word, eval_settings, noise,
                                   "held-out clips of " + str(settings.samples_dir))
    sources = [f"{len(inputs.negatives_calibration)} held-out speech file(s)"] if inputs.negatives_calibration else []
    sources += [str(p) for p in inputs.noise_folders]
    listing = se.NegativeFiles(tuple(inputs.negatives_calibration) + tuple(inputs.noise_files), tuple(sources),
                               inputs.negatives_excluded)
    negatives = se.score_negatives(scorer, listing)
    replayer = se.Replayer(bundle, detector_settings_for(bundle, smoothing_s=settings.smoothing_s), negatives,
                           positives)
    rate = se.threshold_for_rate(replayer, settings.target_fa_per_hour,
                                 replayer.candidate_thresholds(eval_settings.grid()))
    point = replayer.point(replayer.at(rate.threshold))
    highest = replayer.highest_negatives()
    record = se.write_calibration(bundle, rate, replayer.settings, negatives, positives, point, highest)
    if not rate.target_met:
        _LOGGER.warning("no threshold gives at most %g false accepts per hour on %.2f h of held-out negatives; "
                        "wrote the best, %g (%.2f/h): add negatives (--negatives) or more clips", rate.target_fa_per_hour,
                        rate.negative_hours, rate.threshold, rate.fa_per_hour)
    print(se.table([(f"{rate.threshold:g}", point)], list(point.frr)))
    for line in se.describe_highest(highest, rate.threshold):
        print(line)
    speech = {str(p) for p in inputs.negatives_calibration}
    speech_hours = sum(s.duration_s for s in negatives.streams if s.name in speech) / 3600
    return {**record, "target_met": rate.target_met, "speech_hours": round(speech_hours, 4)}


def _hours(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"


def _frozen_text(settings: CustomSettings, template: str) -> str:
    """``template`` with " and the N block(s) after it" (``frozen_blocks``) in its ``%s``; empty without
    ``freeze_first_conv``."""
    blocks = f" and the {settings.frozen_blocks} block(s) after it" if settings.frozen_blocks else ""
    return template % blocks if settings.freeze_first_conv else ""


def _spec_augment_text(augment: AugmentSettings) -> str:
    """The SpecAugment masks of ``augment`` in words; empty when off."""
    parts = [f"{count} of up to {widest} {unit}" for count, widest, unit in (
        (augment.time_masks, augment.time_mask_frames, "frames"),
        (augment.frequency_masks, augment.frequency_mask_bins, "coefficients")) if count and widest]
    return f"SpecAugment masks, {' and '.join(parts)}" if parts else ""


def _highest_negatives_text(calibration: dict) -> list[str]:
    """The model card's table of the negative moments that scored highest; none when the record has none."""
    highest = calibration.get("highest_negatives", [])
    if not highest:
        return []
    return [
        "## What sets the threshold",
        "",
        "The moments of the held-out negatives where the word scored highest: the threshold has to sit above "
        "them (all but the allowed false accepts). Listen to them to hear what the model takes for the word.",
        "",
        "| score | file | seconds |",
        "|---|---|---|",
        *[f"| {m['score']:.4f} | {m['file']} | {m['start_s']:.1f}-{m['end_s']:.1f} |" for m in highest],
        "",
    ]


def model_card(settings: CustomSettings, figures: dict) -> str:
    calibration = figures["calibration"]
    frr = calibration.get("frr", {})
    held = calibration.get("positives", {}).get("clips", 0)
    lines = [
        f"# {settings.bundle_name}: wake word '{settings.word}'",
        "",
        f"A one-keyword bundle (`_silence_`, `_unknown_`, `{settings.word}`) made by `kws-train custom` "
        f"(kws {kws.__version__}); window {figures['window_s']:g} s. Use it with "
        f"`kws listen --model {settings.bundle_name}`.",
        "",
        "## Detection at the calibrated threshold",
        "",
        f"Threshold **{calibration['threshold']:g}**, chosen for at most {calibration['target_fa_per_hour']:g} false "
        f"accepts per hour on {_hours(calibration['negative_hours'])} of held-out negatives "
        f"({_hours(calibration.get('speech_hours', 0))} of speech from speakers never trained on, the rest noise): "
        f"{calibration['false_accepts']} false accept(s) = {calibration['fa_per_hour']:.2f} per hour"
        + ("." if calibration.get("target_met") else " — **the target was not met**: this is the best threshold."),
        "",
        f"False rejects of the {held} held-out clip(s) (never trained on), each between 1.5 s of background:",
        "",
        "| condition | FRR |",
        "|---|---|",
        *[f"| {condition} | {value:.1%} |" for condition, value in frr.items()],
        "",
        f"With {held} clips one miss is {1 / max(held, 1):.1%}: treat these as rough figures. Clip accuracy on the "
        f"held-out split (int8): {figures['holdout_accuracy_int8']:.1%}.",
        "",
        *_highest_negatives_text(calibration),
        "## Training",
        "",
        f"{figures['epochs']} epochs"
        + (f", then {settings.hard_negative_epochs} more"
           + (f" in each of {settings.hard_negative_rounds} rounds" if settings.hard_negative_rounds > 1 else "")
           + f" with {mined} mined hard negatives"
           + (f" (from the training speech as recorded and shifted by "
              f"{', '.join(f'{t:+g}' for t in settings.mine_voice_shifts)} semitones)"
              if settings.mine_voice_shifts else "")
           if (mined := figures["examples"].get("hard negatives (mined)")) else "")
        + f", {figures['train_s']:.0f} s of training, {figures['total_s']:.0f} s in all. "
        + (f"Convolutional layers ({figures['transferred_layers']}) initialised from `{_shown(figures['base'])}`"
           + _frozen_text(settings, ", the first convolution%s kept fixed") + "; the classifier is new."
           if figures["base"] else "Trained from scratch (`--base none`)."),
        "",
        f"Examples (before augmentation: noise, speed, gain {settings.gain_db[0]:+g} to {settings.gain_db[1]:+g} dB"
        + (f" and down to {figures['quietest_dbfs']:g} dBFS speech (the quietest of your clips)"
           if figures.get("quietest_dbfs") is not None else "")
        + ", time shift"
        + (", reverb" if settings.rir else ", reverb in made-up rooms" if settings.synthetic_rooms else "")
        + (f"; {figures['spec_augment']}" if figures.get("spec_augment") else "") + "):",
        "",
        *[f"- {what}: {count}" for what, count in figures["examples"].items()],
    ]
    if figures["near_miss_texts"]:
        lines += ["", "Near-miss texts (`_unknown_`): " + ", ".join(f"\"{t}\"" for t in figures["near_miss_texts"])]
    if figures.get("near_misses_said_as_word"):
        lines += ["", "Left out of them, said as the word but for unstressed vowels (a way of saying it, no near miss): "
                  + ", ".join(f"\"{t}\"" for t in figures["near_misses_said_as_word"])]
    for note in figures["notes"]:
        lines += ["", f"Note: {note}"]
    lines += ["", "Every setting and file list is in `settings.json` beside this card; "
              "`kws-train custom RUN --config settings.json` trains it again.", ""]
    return "\n".join(lines)
