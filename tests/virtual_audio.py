"""Virtual audio devices for tests on machines without a sound card.

* ``PulseAudio``: a private, headless PulseAudio daemon (no dbus, no autospawn) with
  null sinks clocked in real time. A sink's ``.monitor`` is a live microphone that
  hears whatever ``paplay`` plays into the sink, bit-exact when the formats match
  (``norewinds=1`` is required for that).
* ``alsa_config``: extra ALSA pcm definitions (``ALSA_CONFIG_PATH``). PortAudio reads
  the ALSA configuration once, when it is initialised, so each configuration needs a
  fresh interpreter: run the code under test in a subprocess with the returned env.

Every client (paplay, pactl, Python with sounddevice) must use ``PulseAudio.env``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf

_INHERITED_AUDIO_VARIABLES = ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE", "PULSE_RUNTIME_PATH",
                              "ALSA_CONFIG_PATH", "ALSA_PCM_NAME", "AUDIODEV")


def pulseaudio_missing() -> str | None:
    """Why the PulseAudio tests cannot run here (no ``pulseaudio`` binary), or None."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio not found: apt-get install pulseaudio pulseaudio-utils libasound2-plugins"
    return None


class PulseAudio:
    """A PulseAudio daemon of our own, in ``base``; a child process, so we can kill and reap it.

    ``sinks`` maps sink name -> sample rate; each is mono s16le. The first is the
    default sink and its monitor the default source.
    """

    def __init__(self, base: Path, sinks: dict[str, int], start_timeout_s: float = 15.0):
        missing = [tool for tool in ("pactl", "paplay") if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not found: apt-get install pulseaudio-utils")
        self.base = Path(base)
        self.sinks = dict(sinks)
        run = self.base / "run"
        home = self.base / "home"
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(run, 0o700)
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_AUDIO_VARIABLES}
        env.update(XDG_RUNTIME_DIR=str(run), HOME=str(home), PULSE_SERVER=f"unix:{run}/pulse/native")
        self.env = env
        lines = ["load-module module-native-protocol-unix auth-anonymous=1"]
        for name, rate in self.sinks.items():
            lines.append(f"load-module module-null-sink sink_name={name} rate={rate} channels=1 format=s16le "
                         f"norewinds=1 sink_properties=device.description={name}")
        first = next(iter(self.sinks))
        lines += [f"set-default-sink {first}", f"set-default-source {first}.monitor"]
        script = self.base / "kws-test.pa"
        script.write_text("\n".join(lines) + "\n")
        self.log = self.base / "pulseaudio.log"
        self.process = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes", "--use-pid-file=no",
             "-n", "-F", str(script), f"--log-target=file:{self.log}"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pulseaudio did not come up; its log:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-20:])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def play(self, wav: Path, sink: str, timeout: float = 60.0) -> None:
        """Play ``wav`` into ``sink`` in real time; returns once it has been played out."""
        result = subprocess.run(["paplay", f"--device={sink}", str(wav)], env=self.env, capture_output=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"paplay {wav} failed: {result.stderr.decode(errors='replace')}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The daemon vanishes (as a USB microphone does when unplugged)."""
        if self.running:
            self.process.send_signal(sig)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def alsa_config(env: dict, path: Path, text: str) -> dict:
    """``env`` plus ``ALSA_CONFIG_PATH`` that adds the pcm definitions in ``text`` (written to ``path``)."""
    Path(path).write_text(text)
    return dict(env, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{path}")


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    """int16 samples (or float in [-1, 1]) -> 16-bit PCM wav."""
    sf.write(str(path), audio, rate, subtype="PCM_16")
    return Path(path)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16; write these to wavs and pipes alike, so all carry the same samples."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype(np.int16)
