"""``kws listen`` as a service: the audio loop and the supervisor around it.

The main thread reads the audio source chunk by chunk, feeds the spotter and hands
detections to the ``Dispatcher``. Between two chunks it does the rest, each step cheap:

* **systemd** (``kws.sdnotify``): ``READY=1`` once the source is open, ``STATUS=``
  lines, ``WATCHDOG=1`` from this loop only (so a stuck loop gets the service
  restarted), ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1``.
* **SIGHUP** only sets a flag. The loop then builds a new spotter and actions on a
  thread of its own (config, bundles, interpreters) while the old ones keep
  listening, and swaps them in between two chunks: the microphone stays open, no
  audio is skipped. The new spotter first hears the last second or so of audio, so
  a word spoken across the swap is not cut in two. A reload that fails (bad config,
  corrupt model) is one error line; the running config and models stay.
* **SIGTERM/SIGINT** stop within a second or two: a wait for audio is interrupted,
  running hooks are killed, network actions close within their ``close_timeout_s``.
* **A lost microphone** (unplugged, audio server gone, stream stalled) is logged
  once; it is opened again with exponential backoff, the device looked up anew each
  time, and "back" is logged when audio flows again. Models are not reloaded, the
  process does not exit. Files and stdin end the program at their end, as before.
* **Health**: every ``status_interval_s`` a status line in the log and the same as
  JSON in the status file (``kws.status``, read by ``kws status``).

Only this supervisor catches broad exceptions: in a reload (which then fails and
keeps what runs) and around the microphone (which is then retried); the rest rises.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kws.errors import AudioError, ConfigError, KwsError
from kws.sdnotify import Notifier
from kws.status import (STATE_LISTENING, STATE_STOPPED, STATE_WAITING, ProcessUsage, check_status_file,
                        rss_bytes, status_line, write_status)

if TYPE_CHECKING:
    from kws.config import Config
    from kws.detector import Detection
    from kws.spotter import MultiSpotter

_LOGGER = logging.getLogger(__name__)

DEFAULT_STATUS_INTERVAL_S = 300.0
"""A status line in the log (and the status file) this often unless told."""
OVERRUN_REPORT_S = 10.0
"""At most one "fell behind" warning per this many seconds."""
WAIT_SLICE_S = 0.25
"""While the microphone is gone: how often the loop looks at signals, reloads, the watchdog and the clock."""
WARMUP_EXTRA_S = 0.5
"""A spotter swapped in by a reload first hears its window plus this much of the latest audio."""
RECENT_AUDIO_S = 3.0
"""Audio kept for that (at most)."""


@dataclass(frozen=True)
class Setup:
    """What the config file and the model options make: the config, and one spotter for all the models."""

    config: Config
    spotter: MultiSpotter


@dataclass(frozen=True)
class DaemonSettings:
    """How ``kws listen`` runs: where audio comes from, where its status goes, how it retries."""

    input: str | None = None
    """``--input``: an audio file, or ``-`` for raw PCM on stdin; None = the microphone."""
    device: str | None = None
    """``--device``: wins over the config's ``device``; None = the config's, else the default input."""
    save_detections: Path | None = None
    """``--save-detections``: wins over the config's ``save_detections``."""
    config_path: Path | None = None
    """The config file (re-read on SIGHUP by the loader; named in log lines). None = no config file."""
    status_interval_s: float | None = None
    """``--status-interval-s``: wins over ``[service] status_interval_s``; None = that, else 300 s."""
    status_file: Path | None = None
    """``--status-file``: the status as JSON, rewritten at each status line and change of state; None = none."""
    retry_first_s: float = 1.0
    """The first attempt to open a lost microphone again comes this long after it was lost ..."""
    retry_max_s: float = 30.0
    """... and the wait doubles after each failed attempt, up to this."""
    overrun_report_s: float = OVERRUN_REPORT_S
    """At most one "fell behind the microphone" warning per this many seconds."""

    def __post_init__(self) -> None:
        if self.status_interval_s is not None and not self.status_interval_s > 0:
            raise ConfigError(f"--status-interval-s {self.status_interval_s:g}: must be positive (seconds)")
        if not 0 < self.retry_first_s <= self.retry_max_s:
            raise ConfigError("the microphone retry times must be positive, the first no longer than the longest")

    @property
    def uses_microphone(self) -> bool:
        return self.input is None


class _Stop(BaseException):
    """SIGTERM or SIGINT during a wait for audio. Not an ``Exception``, so no ``except Exception`` swallows it."""


@dataclass
class _Generation:
    """What a reload replaces: config, spotter and actions; and where the spotter's stream time starts."""

    config: Config
    spotter: MultiSpotter
    actions: list
    save_dir: Path | None
    base_samples: int = 0
    """Stream position of the first sample this spotter heard (its offsets count from there)."""

    @property
    def models(self) -> dict[str, tuple[str, ...]]:
        return {h.name: tuple(h.settings.keywords or h.bundle.keywords) for h in self.spotter.heads}


@dataclass(frozen=True)
class _Failed:
    """A reload that did not work: the one line to log."""

    message: str


class Daemon:
    """Runs ``kws listen``: ``run()`` returns the exit status.

    ``load`` reads the config file and the models and makes the spotter, at the start
    and again on each SIGHUP (it carries the command line's options, which win over
    the config's). ``notifier`` talks to systemd (a no-op outside it).
    """

    def __init__(self, settings: DaemonSettings, load: Callable[[], Setup], notifier: Notifier | None = None):
        self.settings = settings
        self.load = load
        self.notifier = notifier if notifier is not None else Notifier()
        self._generation: _Generation | None = None
        self._dispatcher = None
        self._source = None
        self._source_description = "no source yet"
        self._collector = None
        self._recent = None
        self._position = 0
        """Samples fed to the spotters since the start."""
        # signals (set by the handlers, read by the loop)
        self._stop_requested = False
        self._reload_requested = False
        self._interruptible = False
        self._aborting = False
        self._previous_handlers: dict[int, Any] = {}
        # reloads
        self._reload_thread: threading.Thread | None = None
        self._reload_results: queue.SimpleQueue = queue.SimpleQueue()
        self._reload_again = False
        self.reloads = 0
        self.failed_reloads = 0
        # microphone
        self._lost_at: float | None = None
        """When the microphone was lost (monotonic); None while it delivers audio."""
        self._lost_wall = 0.0
        self._retry_delay_s = settings.retry_first_s
        self.microphone_losses = 0
        self._overruns_before = 0
        self._overflows_before = 0
        self._overruns_reported, self._overruns_reported_at = 0, -math.inf
        # health
        self.detections: dict[str, dict[str, int]] = {}
        self._last_detection: Detection | None = None
        self._last_offset_s: dict[str, float] = {}
        """Model -> stream offset of its last detection reported."""
        self._started_at = time.time()
        self._started_mono = time.monotonic()
        self._usage = ProcessUsage()
        self._cpu_percent: float | None = None
        self._next_status_at = math.inf
        self._status_write_failed = False

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        self._generation = self._build(None)
        self._dispatcher = self._new_dispatcher(self._generation.actions)
        try:
            self._start()
            self._loop()
        except (_Stop, KeyboardInterrupt):
            _LOGGER.info("stopping")
            self._aborting = True
        finally:
            self._shutdown()
        return 0

    def _new_dispatcher(self, actions):
        from kws.actions import Dispatcher

        return Dispatcher(actions)

    def _start(self) -> None:
        from kws.capture import AudioRing
        from kws.sources import open_source

        self._install_signal_handlers()  # (before "listening on": from then on a SIGHUP is a reload)
        g = self._generation
        rate = g.spotter.sample_rate_hz
        if self.settings.status_file is not None:
            check_status_file(self.settings.status_file)
        source = open_source(self.settings.input, rate, self._device_spec(g), block_ms=g.spotter.block_ms)
        self._source = source
        self._source_description = source.description
        models = "; ".join(f"model {h.bundle.name} ({h.bundle.json_path}), keywords "
                           f"{', '.join(h.settings.keywords or h.bundle.keywords)}" for h in g.spotter.heads)
        _LOGGER.info("%s; reading %s", models, source.description)
        if g.save_dir is not None:
            _LOGGER.info("saving the audio around each detection to %s", g.save_dir)
            self._collector = self._new_collector(g, 0)
        self._recent = AudioRing(int(RECENT_AUDIO_S * rate))
        if hasattr(source, "start"):
            source.start()  # a microphone that cannot be opened now is the user's to fix: exit 2
        self._next_status_at = time.monotonic() + self._status_interval_s()
        self._write_status(self._status(STATE_LISTENING))
        self.notifier.ready(self._status_text())

    def _loop(self) -> None:
        """Until SIGTERM (``_Stop`` or the flag) or the end of a file or stdin."""
        while not self._stop_requested:
            if self._source is None and self._reopen() is None:
                break
            source = self._source
            chunks = source.chunks()
            while not self._stop_requested and self._source is source:  # (a reload may switch devices)
                try:
                    chunk = self._next_chunk(chunks)
                except AudioError as error:
                    if not self.settings.uses_microphone:
                        raise
                    self._microphone_failed(str(error))
                    break
                except Exception as error:  # the supervisor: whatever breaks the microphone, it is opened again
                    if not self.settings.uses_microphone:
                        raise
                    _LOGGER.debug("the microphone failed", exc_info=True)
                    self._microphone_failed(f"{source.description} failed: {type(error).__name__}: {error}")
                    break
                if chunk is None:
                    if self.settings.uses_microphone:  # (a microphone's chunks never end; were they to, retry)
                        self._microphone_failed(f"{source.description} ended its stream")
                        break
                    self._end_of_input()
                    return
                self._feed(chunk)
                self._between_chunks(audio_flowing=True)
        _LOGGER.info("stopping")
        self._aborting = True

    def _next_chunk(self, chunks) -> np.ndarray | None:
        """The next chunk, None at the end of the input; SIGTERM meanwhile raises ``_Stop``."""
        self._interruptible = True
        try:
            if self._stop_requested:
                raise _Stop()
            return next(chunks, None)
        finally:
            self._interruptible = False

    def _feed(self, chunk: np.ndarray) -> None:
        g = self._generation
        if self._lost_at is not None:
            self._microphone_back()
        self._recent.append(chunk)
        detections = self._emitted(g.spotter.feed(chunk), g)
        self._position += chunk.size
        for detection in detections:
            self._count(detection)
            self._dispatcher.submit(detection)
        if self._collector is not None:
            for clip in self._collector.feed(chunk, detections):
                self._dispatcher.submit(clip)
        if detections:
            self.notifier.status(self._status_text())

    def _emitted(self, detections: list[Detection], g: _Generation) -> list[Detection]:
        """The spotter's detections with offsets from the start of the stream (also for a spotter that joined
        later), without those within their model's refractory time of the last one reported.

        (The detector keeps that time itself; this carries it across a reload: a spotter
        swapped in may report a word again that the one before had reported.)
        """
        emitted = []
        for detection in detections:
            if g.base_samples:
                offset_s = detection.offset_s + g.base_samples / g.spotter.sample_rate_hz
                detection = dataclasses.replace(detection, offset_s=offset_s)
            last_s = self._last_offset_s.get(detection.model)
            refractory_s = next(h.settings.refractory_s for h in g.spotter.heads if h.name == detection.model)
            if last_s is not None and detection.offset_s - last_s < refractory_s:
                _LOGGER.debug("%s %s at %.2f s: reported already at %.2f s", detection.model, detection.keyword,
                              detection.offset_s, last_s)
                continue
            self._last_offset_s[detection.model] = detection.offset_s
            emitted.append(detection)
        return emitted

    def _count(self, detection: Detection) -> None:
        words = self.detections.setdefault(detection.model, {})
        words[detection.keyword] = words.get(detection.keyword, 0) + 1
        self._last_detection = detection

    def _between_chunks(self, audio_flowing: bool) -> None:
        """Everything but the audio, cheap unless there is something to do."""
        if audio_flowing or self._lost_at is not None:  # not while a stalled stream is being found out
            self.notifier.watchdog()
        if audio_flowing:
            self._report_overruns()
        if self._reload_requested:
            self._start_reload()
        if self._reload_thread is not None:
            try:
                result = self._reload_results.get_nowait()
            except queue.Empty:
                pass
            else:
                self._finish_reload(result)
        if time.monotonic() >= self._next_status_at:
            self._periodic_status()

    def _end_of_input(self) -> None:
        """Silence after the end of a file or stdin, so a keyword at the very end still fills a window."""
        g = self._generation
        silence = np.zeros(int(g.spotter.window_s * g.spotter.sample_rate_hz), np.float32)
        detections = self._emitted(g.spotter.feed(silence), g)
        for detection in detections:
            self._count(detection)
            self._dispatcher.submit(detection)
        if self._collector is not None:  # silence, not audio: clips do not get it
            for clip in self._collector.feed(np.zeros(0, np.float32), detections):
                self._dispatcher.submit(clip)

    def _shutdown(self) -> None:
        self._restore_signal_handlers()
        self.notifier.stopping()
        self._close_source()
        if self._collector is not None:
            for clip in self._collector.finish():  # what there is of their post-roll
                self._dispatcher.submit(clip)
        self._dispatcher.close(abort=self._aborting)
        self._discard_pending_reload()
        if self._generation is not None:
            self._generation.spotter.close()
        if self.settings.status_file is not None and self._next_status_at != math.inf:
            self._cpu_percent = self._usage.cpu_percent()
            self._write_status(self._status(STATE_STOPPED))
        self.notifier.close()
        if signal.SIGHUP in self._previous_handlers:
            signal.signal(signal.SIGHUP, self._previous_handlers[signal.SIGHUP])

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        wanted = {signal.SIGTERM: self._on_stop, signal.SIGHUP: self._on_hup}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not if started with SIGINT ignored)
            wanted[signal.SIGINT] = self._on_stop
        for signum, handler in wanted.items():
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        """A second SIGTERM while closing ends kws at once; a SIGHUP is ignored until it is done."""
        if signal.SIGTERM in self._previous_handlers:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if signal.SIGINT in self._previous_handlers:
            signal.signal(signal.SIGINT, self._previous_handlers[signal.SIGINT])

    def _on_stop(self, signum, frame) -> None:
        self._stop_requested = True
        if self._interruptible:
            raise _Stop()

    def _on_hup(self, signum, frame) -> None:
        self._reload_requested = True

    # ------------------------------------------------------------------ building and reloading

    def _device_spec(self, g: _Generation) -> str | None:
        return self.settings.device or g.config.device

    def _status_interval_s(self) -> float:
        return self.settings.status_interval_s or self._generation.config.status_interval_s or DEFAULT_STATUS_INTERVAL_S

    def _build(self, running: _Generation | None) -> _Generation:
        """A new config, spotter and actions; actions set up exactly as running ones are those, kept."""
        setup = self.load()
        spotter = setup.spotter
        try:
            if running is not None and spotter.sample_rate_hz != running.spotter.sample_rate_hz:
                raise ConfigError(f"the models now take {spotter.sample_rate_hz} Hz audio, the running ones "
                                  f"{running.spotter.sample_rate_hz} Hz: restart kws to change the sample rate")
            save_dir = self.settings.save_detections or setup.config.save_detections
            actions = self._actions(setup.config, spotter, save_dir, running.actions if running else [])
        except BaseException:
            spotter.close()
            raise
        return _Generation(setup.config, spotter, actions, None if save_dir is None else Path(save_dir))

    def _actions(self, config: Config, spotter: MultiSpotter, save_dir, running: list) -> list:
        from kws.actions import HookAction, JsonLinesAction, configured_actions
        from kws.capture import CaptureSettings, ClipWriter

        def same(kind: type, settings) -> Any:
            return next((a for a in running if isinstance(a, kind) and a.settings == settings), None)

        actions = [next((a for a in running if isinstance(a, JsonLinesAction)), None) or JsonLinesAction()]
        try:
            if config.hooks.commands:
                actions.append(same(HookAction, config.hooks) or HookAction(config.hooks))
            if save_dir is not None:
                capture = CaptureSettings.for_spotter(Path(save_dir), spotter)
                # a new ClipWriter checks its folder now, before the microphone opens (or the reload is done)
                actions.append(same(ClipWriter, capture) or ClipWriter(capture))
            keywords = {h.bundle.name: h.settings.keywords or h.bundle.keywords for h in spotter.heads}
            actions += configured_actions(config, keywords, running)  # [mqtt], [webhook]
        except BaseException:
            _close_new(actions, running)
            raise
        return actions

    def _new_collector(self, g: _Generation, start_sample: int):
        from kws.capture import CaptureSettings, ClipCollector

        return ClipCollector(CaptureSettings.for_spotter(g.save_dir, g.spotter), start_sample)

    def _start_reload(self) -> None:
        self._reload_requested = False
        if self._reload_thread is not None:  # one at a time: another once this one is done
            self._reload_again = True
            return
        self.notifier.reloading()
        _LOGGER.info("reloading %s", self.settings.config_path or "the models")
        running = self._generation
        self._reload_thread = threading.Thread(target=self._reload_in_background, args=(running,),
                                               name="kws-reload", daemon=True)
        self._reload_thread.start()

    def _reload_in_background(self, running: _Generation) -> None:
        try:
            result = self._build(running)
        except KwsError as error:
            result = _Failed(str(error))
        except Exception as error:  # the supervisor: a reload that fails in any way keeps what runs
            _LOGGER.debug("reload failed", exc_info=True)
            result = _Failed(f"{type(error).__name__}: {error}")
        self._reload_results.put(result)

    def _finish_reload(self, result: _Generation | _Failed) -> None:
        self._reload_thread = None
        if isinstance(result, _Failed):
            self.failed_reloads += 1
            message = " ".join(result.message.split("\n"))
            _LOGGER.error("reload of %s failed, kept the running config and models: %s",
                          self.settings.config_path or "the models", message)
        else:
            self._swap(result)
            self.reloads += 1
        self._write_status(self._status(self._state()))
        self.notifier.ready(self._status_text())
        if self._reload_again:
            self._reload_again = False
            self._start_reload()

    def _swap(self, new: _Generation) -> None:
        """Between two chunks: the new spotter hears the latest audio first, then takes over; actions follow."""
        old = self._generation
        rate = new.spotter.sample_rate_hz
        end = self._recent.end
        warm = min(end, int((new.spotter.window_s + WARMUP_EXTRA_S) * rate))
        _, audio = self._recent.read(end - warm, end)
        new.spotter.feed(audio)  # what it would detect there, the old spotter has judged already
        new.base_samples = self._position - audio.size
        if new.save_dir is None and self._collector is not None:
            for clip in self._collector.finish():  # (to the old actions: submitted before the swap)
                self._dispatcher.submit(clip)
            self._collector = None
        elif new.save_dir is not None and self._collector is None:
            self._collector = self._new_collector(new, end - audio.size)
            self._collector.feed(audio)  # pre-roll for a detection right after the reload
        self._dispatcher.replace(new.actions)
        self._generation = new
        old.spotter.close()
        _LOGGER.info("reloaded%s: %s", f" {self.settings.config_path}" if self.settings.config_path else "",
                     _changes(old, new, self.settings))
        if new.save_dir is not None and new.save_dir != old.save_dir:
            _LOGGER.info("saving the audio around each detection to %s", new.save_dir)
        interval_s = self._status_interval_s()
        self._next_status_at = min(self._next_status_at, time.monotonic() + interval_s)
        if self.settings.uses_microphone and self._device_spec(new) != self._device_spec(old):
            _LOGGER.info("the device is now %s (was %s): reopening the microphone",
                         _device_name(self._device_spec(new)), _device_name(self._device_spec(old)))
            self._close_source()
            self._retry_delay_s = 0.0  # the first attempt at once
            self._source = None

    def _discard_pending_reload(self) -> None:
        """Stopping: a reload built but not swapped in is closed (one still building is left to end with us)."""
        try:
            result = self._reload_results.get_nowait()
        except queue.Empty:
            return
        if isinstance(result, _Generation):
            _close_new(result.actions, self._generation.actions)
            result.spotter.close()

    # ------------------------------------------------------------------ the microphone

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        self._overruns_before += getattr(source, "overruns", 0)
        self._overflows_before += getattr(source, "device_overflows", 0)
        source.close()

    def _microphone_failed(self, why: str) -> None:
        self._close_source()
        if self._lost_at is not None:  # opened again, but no audio came: keep backing off
            _LOGGER.debug("microphone still not back: %s", why)
            return
        self._lost_at, self._lost_wall = time.monotonic(), time.time()
        self.microphone_losses += 1
        _LOGGER.warning("microphone lost: %s; waiting for it to come back (next try in %g s, the wait doubling "
                        "after each try up to %g s)", why, self._retry_delay_s, self.settings.retry_max_s)
        self._write_status(self._status(STATE_WAITING))
        self.notifier.status(self._status_text())

    def _reopen(self):
        """Opens the microphone again, after a wait that doubles each time; None if told to stop meanwhile."""
        from kws.sources import MicrophoneSource, refresh_devices

        while not self._stop_requested:
            delay_s = self._retry_delay_s
            self._retry_delay_s = min(max(2 * delay_s, self.settings.retry_first_s), self.settings.retry_max_s)
            if not self._wait(delay_s):
                return None
            g = self._generation  # (a reload meanwhile may have named another device)
            spec = self._device_spec(g)
            source = None
            try:
                refresh_devices()  # a microphone plugged in again may have a new index; look it up anew
                source = MicrophoneSource(spec, g.spotter.sample_rate_hz, block_ms=g.spotter.block_ms)
                source.start(log_level=logging.DEBUG if self._lost_at is not None else logging.INFO)
            except Exception as error:  # the supervisor: AudioError mostly, but whatever fails, try again later
                if source is not None:
                    source.close()
                if self._lost_at is None:  # a new device (reload) that cannot be opened: now it is lost
                    self._microphone_failed(str(error))
                else:
                    _LOGGER.debug("microphone %s not back yet: %s; next try in %g s", _device_name(spec), error,
                                  self._retry_delay_s)
                continue
            self._source = source
            self._source_description = source.description
            return source
        return None

    def _wait(self, seconds: float) -> bool:
        """Sleeps ``seconds`` in slices, minding signals, reloads, the watchdog and the clock; False if stopping."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return True
            time.sleep(min(WAIT_SLICE_S, remaining_s))
            self._between_chunks(audio_flowing=False)
        return False

    def _microphone_back(self) -> None:
        lost_s = time.monotonic() - self._lost_at
        self._lost_at = None
        self._retry_delay_s = self.settings.retry_first_s
        _LOGGER.info("microphone back after %.1f s: %s", lost_s, self._source_description)
        self._write_status(self._status(STATE_LISTENING))
        self.notifier.status(self._status_text())

    def _report_overruns(self) -> None:
        overruns = self._overruns_before + getattr(self._source, "overruns", 0)
        if overruns > self._overruns_reported and \
                time.monotonic() - self._overruns_reported_at >= self.settings.overrun_report_s:
            _LOGGER.warning("fell behind the microphone: %d audio block(s) dropped so far", overruns)
            self._overruns_reported, self._overruns_reported_at = overruns, time.monotonic()

    # ------------------------------------------------------------------ health

    def _state(self) -> str:
        return STATE_WAITING if self._lost_at is not None or self._source is None else STATE_LISTENING

    def _status_text(self) -> str:
        """One line for ``systemctl status`` (``STATUS=``)."""
        total = sum(sum(words.values()) for words in self.detections.values())
        if self._lost_at is not None or self._source is None:
            since = time.strftime(" since %H:%M:%S", time.localtime(self._lost_wall)) if self._lost_at else ""
            where = f"waiting for microphone {_device_name(self._device_spec(self._generation))}{since} ..."
        else:
            where = f"listening on {self._source_description}"
        return f"{where}; {total} detection(s)"

    def _status(self, state: str) -> dict[str, Any]:
        g = self._generation
        source = self._source
        return {
            "format_version": 1, "pid": os.getpid(), "state": state, "source": self._source_description,
            "started_at": self._started_at, "written_at": time.time(),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "status_interval_s": self._status_interval_s(),
            "models": {name: list(words) for name, words in g.models.items()},
            "detections": {model: dict(words) for model, words in self.detections.items()},
            "detections_total": sum(sum(words.values()) for words in self.detections.values()),
            "last_detection": self._last_detection.to_dict() if self._last_detection else None,
            "overruns": self._overruns_before + getattr(source, "overruns", 0),
            "device_overflows": self._overflows_before + getattr(source, "device_overflows", 0),
            "microphone_losses": self.microphone_losses,
            "microphone_lost_s": None if self._lost_at is None else round(time.monotonic() - self._lost_at, 1),
            "reloads": self.reloads, "failed_reloads": self.failed_reloads,
            "cpu_percent": None if self._cpu_percent is None else round(self._cpu_percent, 2),
            "rss_bytes": rss_bytes(),
        }

    def _periodic_status(self) -> None:
        self._next_status_at = time.monotonic() + self._status_interval_s()
        self._cpu_percent = self._usage.cpu_percent()
        status = self._status(self._state())
        _LOGGER.info("%s", status_line(status))
        self._write_status(status)
        self.notifier.status(self._status_text())

    def _write_status(self, status: dict[str, Any]) -> None:
        path = self.settings.status_file
        if path is None:
            return
        try:
            write_status(path, status)
        except OSError as error:  # a full disk must not stop kws
            level = logging.DEBUG if self._status_write_failed else logging.WARNING
            _LOGGER.log(level, "cannot write the status file %s: %s", path, error.strerror or error)
            self._status_write_failed = True
        else:
            self._status_write_failed = False


def _close_new(actions: list, running: list) -> None:
    """Close the actions made for a reload that is not used (those kept from ``running`` stay)."""
    for action in actions:
        if not any(action is kept for kept in running):
            action.close()


def _device_name(spec: str | None) -> str:
    return "(the default input)" if spec is None else repr(spec)


def _changes(old: _Generation, new: _Generation, settings: DaemonSettings) -> str:
    """``models kws12, computer; thresholds yes 0.5 -> 0.9; hooks changed`` (or ``...; nothing changed``)."""
    old_heads = {h.name: h for h in old.spotter.heads}
    new_heads = {h.name: h for h in new.spotter.heads}
    text = f"models {', '.join(new_heads)}"
    changes = []
    added = [name for name in new_heads if name not in old_heads]
    removed = [name for name in old_heads if name not in new_heads]
    if added:
        changes.append(f"added {', '.join(added)}")
    if removed:
        changes.append(f"removed {', '.join(removed)}")
    several = len(new_heads) > 1
    thresholds = []
    for name, b in new_heads.items():
        a = old_heads.get(name)
        if a is None:
            continue
        of = f" of {name}" if several else ""
        if a.bundle.sha256 != b.bundle.sha256:
            changes.append(f"model {name} is a new one ({b.bundle.tflite_path})")
        before, after = a.settings.keywords or a.bundle.keywords, b.settings.keywords or b.bundle.keywords
        if tuple(before) != tuple(after):
            changes.append(f"keywords{of} {', '.join(before)} -> {', '.join(after)}")
        for keyword in b.settings.thresholds:
            x, y = a.settings.thresholds.get(keyword), b.settings.thresholds[keyword]
            if x != y:
                thresholds.append(f"{f'{name}/' if several else ''}{keyword} "
                                  f"{'-' if x is None else f'{x:g}'} -> {y:g}")
        for option in ("stride_ms", "smoothing_s", "refractory_s"):
            x, y = getattr(a.settings, option), getattr(b.settings, option)
            if x != y:
                changes.append(f"{option}{of} {x:g} -> {y:g}")
    if thresholds:
        changes.append(f"thresholds {', '.join(thresholds)}")
    if old.config.hooks != new.config.hooks:
        changes.append("hooks changed")
    for what, x, y in (("mqtt", old.config.mqtt, new.config.mqtt), ("webhook", old.config.webhook, new.config.webhook)):
        if x != y:
            changes.append(f"{what} {'added' if x is None else 'removed' if y is None else 'changed'}")
    if old.save_dir != new.save_dir:
        changes.append(f"saving detections {'to ' + str(new.save_dir) if new.save_dir else 'off'}")
    if settings.uses_microphone and (settings.device or old.config.device) != (settings.device or new.config.device):
        changes.append(f"device {_device_name(settings.device or new.config.device)}")
    if old.config.status_interval_s != new.config.status_interval_s and settings.status_interval_s is None:
        changes.append(f"status_interval_s {new.config.status_interval_s or DEFAULT_STATUS_INTERVAL_S:g}")
    return f"{text}; {'; '.join(changes) if changes else 'nothing else changed'}"
