"""The runtime never imports TensorFlow or training/, and does no work at import."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT


def test_kws_sources_do_not_import_tensorflow_or_training():
    offenders = []
    for path in sorted((ROOT / "kws").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("tensorflow", "training", "keras")]
    assert offenders == []


def test_running_the_runtime_loads_neither_tensorflow_nor_librosa():
    code = ("import sys; from kws.cli import main; rc = main(['info', '--json']); "
            "bad = [m for m in ('tensorflow', 'training', 'keras', 'librosa') if m in sys.modules]; "
            "print('LOADED', bad, file=sys.stderr); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert "LOADED []" in result.stderr.decode()


def test_importing_kws_is_cheap():
    code = ("import sys, kws, kws.cli, kws.features, kws.bundle, kws.detector, kws.sources, kws.resample, kws.spotter, "
            "kws.daemon; print(sorted(m for m in sys.modules if m.startswith(('sounddevice', 'ai_edge', 'tflite', 'scipy', 'librosa'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"
