"""Shared fixtures: paths to the bundled model and to real clips in ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import shutil

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KWS_SHARED", ROOT.parent / "shared"))
TEST_A = SHARED / "data" / "speech_commands_test_a"
SPEECH_COMMANDS = SHARED / "data" / "speech_commands"
DEFAULT_MODEL = ROOT / "models" / "kws12.json"
SAMPLE_RATE_HZ = 16000

# Real test-set clips (speakers never trained on) that the bundled model detects at every
# alignment to the inference stride (32 offsets over 100 ms checked); used to build streams
# with known keywords at known times, so live-microphone tests do not depend on luck.
KEYWORD_CLIPS = (
    ("yes", "yes/3b4f8f24_nohash_0.flac"),
    ("stop", "stop/37fc5d97_nohash_2.flac"),
    ("off", "off/0cb74144_nohash_0.flac"),
    ("go", "go/18f8afd5_nohash_4.flac"),
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not TEST_A.is_dir():
        pytest.fail(f"{TEST_A} not found: the tests need ../shared beside the checkout (or set KWS_SHARED)")
    return SHARED / "data"


def read_clip(relative: str) -> np.ndarray:
    audio, rate = sf.read(str(TEST_A / relative), dtype="float32")
    assert rate == SAMPLE_RATE_HZ
    return audio


def run_kws(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """``kws ARGS`` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kws.cli", *args], input=input, capture_output=True,
                          env=env, timeout=timeout, cwd=ROOT)


def kws_train(*args: str, timeout: float = 600):
    """``kws-train ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT)


def one_error_line(result, program: str = "kws-train") -> str:
    """The single ``PROGRAM: error: ...`` line of a run that must stop with status 2."""
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), lines
    return lines[0]


def keyword_stream(gap_s: float = 1.5, noise_rms: float = 0.003, seed: int = 0):
    """Audio with the ``KEYWORD_CLIPS`` words at known times, over quiet noise.

    Returns ``(audio float32, [(word, start_s, end_s), ...])``; starts with ``gap_s`` of noise.
    """
    rng = np.random.default_rng(seed)
    parts, events, position = [], [], 0
    for word, relative in KEYWORD_CLIPS:
        gap = np.zeros(int(gap_s * SAMPLE_RATE_HZ), np.float32)
        clip = read_clip(relative)
        parts += [gap, clip]
        position += gap.size
        events.append((word, position / SAMPLE_RATE_HZ, (position + clip.size) / SAMPLE_RATE_HZ))
        position += clip.size
    parts.append(np.zeros(int(gap_s * SAMPLE_RATE_HZ), np.float32))
    audio = np.concatenate(parts)
    audio += rng.normal(0, noise_rms, audio.size).astype(np.float32)
    return np.clip(audio, -1, 1), events


UNKNOWN_WORDS = ("bed", "cat")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, shared_data):
    """Speech Commands layout with 4 real clips per word (1 in validation) and generated noise."""
    root = tmp_path_factory.mktemp("speech_commands")
    validation = []
    from training.data import KEYWORDS

    for word in KEYWORDS + UNKNOWN_WORDS:
        (root / word).mkdir()
        for i, path in enumerate(sorted((SPEECH_COMMANDS / word).iterdir())[:4]):
            shutil.copy(path, root / word / path.name)
            if i == 0:
                validation.append(f"{word}/{path.name}")
    (root / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (root / "testing_list.txt").write_text("")
    (root / "_background_noise_").mkdir()
    rng = np.random.default_rng(0)
    sf.write(root / "_background_noise_" / "white.wav", (0.3 * rng.standard_normal(80000)).astype(np.float32), 16000)
    test = tmp_path_factory.mktemp("test_layout")
    for label in ("yes", "stop", "_unknown_"):
        (test / label).mkdir()
        for path in sorted((TEST_A / label).iterdir())[:2]:
            shutil.copy(path, test / label / path.name)
    return root, test


