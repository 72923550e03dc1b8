"""``kws wyoming``: a wake-word server for Home Assistant's voice pipeline, over the Wyoming protocol.

A client (Home Assistant, a satellite, any ``wyoming`` client) connects over TCP
or a Unix socket and sends events: ``describe`` is answered with ``info`` (one
wake program ``kws``, one wake model ``MODEL/keyword`` per keyword of each
loaded model); ``detect`` may name the wake words to listen for; then
``audio-start``, ``audio-chunk``... (PCM of any rate, sample width and channel
count), ``audio-stop``. Each time a keyword fires the server sends ``detection``
(its name, and a timestamp in milliseconds in the client's time base: that of
``audio-start``, else of the first chunk, else 0 at the start of the stream);
at ``audio-stop`` it sends ``not-detected`` if nothing fired since the last
``audio-start`` or ``detect``.

Every connection has its own ``WakeSession``: its own converter and its own
``MultiSpotter`` of fresh heads built from the bundles all connections share
(an interpreter for ``kws12`` takes well under a millisecond to make). The
spotter runs inline on the event loop: a 64 ms chunk takes a fraction of a
millisecond. SIGTERM and SIGINT stop the server within ``STOP_GRACE_S``.

Only ``kws wyoming`` imports this module; it needs the optional ``wyoming``
package (``pip install 'kws[wyoming]'``) and says so if it is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import numpy as np

from kws import __version__
from kws.actions import model_key, split_key
from kws.bundle import Bundle
from kws.detector import Detection, DetectorSettings
from kws.errors import AudioError, ConfigError, KwsError
from kws.spotter import ModelHead, MultiSpotter

try:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.error import Error
    from wyoming.event import Event
    from wyoming.info import Attribution, Describe, Info, WakeModel, WakeProgram
    from wyoming.server import AsyncEventHandler
    from wyoming.wake import Detect
    from wyoming.wake import Detection as WyomingDetection
    from wyoming.wake import NotDetected
except ImportError as _error:  # checked at start-up: kws wyoming is the only importer
    raise KwsError(f"kws wyoming needs the wyoming package ({_error}): pip install 'kws[wyoming]' "
                   "(or pip install 'wyoming>=1.5')") from None

_LOGGER = logging.getLogger(__name__)

DEFAULT_URI = "tcp://0.0.0.0:10400"
"""Where ``kws wyoming`` listens by default (10400 is the usual port of Wyoming wake-word services)."""
PROGRAM_NAME = "kws"
"""The wake program's name in ``info``."""
STOP_GRACE_S = 1.0
"""On SIGTERM or SIGINT, open connections get this long to end before they are cancelled."""
SAMPLE_WIDTHS_BYTES = (1, 2, 3, 4)
"""PCM sample widths the server reads: unsigned 8-bit, signed 16-, 24- and 32-bit little-endian."""
URI_EXAMPLE = "tcp://HOST:PORT (e.g. tcp://0.0.0.0:10400) or unix:///PATH/TO/SOCKET"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens and what it announces."""

    uri: str = DEFAULT_URI
    """``tcp://HOST:PORT`` or ``unix://PATH``; checked on construction."""
    languages: tuple[str, ...] = ("en",)
    """Languages announced for every wake word in ``info``."""

    def __post_init__(self) -> None:
        _ = self.address  # raises ConfigError for a URI the server cannot listen on

    @property
    def address(self) -> tuple[str, str, int | None]:
        """``("tcp", host, port)`` or ``("unix", path, None)``."""
        try:
            parts = urlsplit(self.uri)
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"--uri {self.uri}: {error}; use {URI_EXAMPLE}") from None
        if parts.scheme == "tcp":
            if not parts.hostname or port is None:
                raise ConfigError(f"--uri {self.uri} needs a host and a port: use {URI_EXAMPLE}")
            return "tcp", parts.hostname, port
        if parts.scheme == "unix":
            path = parts.netloc + parts.path
            if not path:
                raise ConfigError(f"--uri {self.uri} needs a socket path: use {URI_EXAMPLE}")
            return "unix", path, None
        raise ConfigError(f"--uri {self.uri}: the server listens on tcp:// or unix:// only; use {URI_EXAMPLE}")


# --------------------------------------------------------------------------- the models, shared


@dataclass(frozen=True)
class WakeWord:
    """One keyword of one model, as announced in ``info``."""

    model: str
    keyword: str

    @property
    def name(self) -> str:
        """``MODEL/keyword``: the wake model's name (Home Assistant's wake word id)."""
        return model_key(self.model, self.keyword)


class WakeEngine:
    """The loaded models, shared by every connection: the wake words to announce, and fresh spotters.

    Built from one model head per bundle with its detector settings (thresholds,
    smoothing, the keywords allowed to fire), as ``kws listen`` resolves them.
    """

    def __init__(self, models: Sequence[tuple[Bundle, DetectorSettings]]):
        if not models:
            raise ValueError("a wake engine needs at least one model")
        self.models = list(models)
        self.wake_words = tuple(WakeWord(bundle.name, keyword) for bundle, settings in self.models
                                for keyword in _may_fire(bundle, settings))
        self.sample_rate_hz = self.models[0][0].features.sample_rate_hz

    @classmethod
    def from_spotter(cls, spotter: MultiSpotter) -> WakeEngine:
        """The bundles and settings of ``spotter``'s heads (its interpreters are not shared)."""
        return cls([(head.bundle, head.settings) for head in spotter.heads])

    def select(self, names: Sequence[str] | None) -> tuple[dict[WakeWord, str], list[str]]:
        """The wake words ``names`` ask for, each with the name to report it by; and the names not known.

        A name is ``MODEL/keyword``, a keyword (in every model that has it) or a
        model's name (all its keywords); case and surrounding space do not matter.
        No names (None or empty) means every wake word, reported as ``MODEL/keyword``.
        """
        if not names:
            return {word: word.name for word in self.wake_words}, []
        chosen: dict[WakeWord, str] = {}
        unknown = []
        for name in names:
            model, keyword = split_key(str(name).strip().lower())
            matches = [w for w in self.wake_words
                       if (model is None and keyword in (w.keyword.lower(), w.model.lower()))
                       or (model == w.model.lower() and keyword == w.keyword.lower())]
            if not matches:
                unknown.append(str(name))
            for word in matches:
                chosen.setdefault(word, str(name))
        return chosen, unknown

    def spotter(self, words: Iterable[WakeWord]) -> MultiSpotter | None:
        """A new spotter on which only ``words`` fire; None if there are none."""
        wanted = set(words)
        heads = []
        for bundle, settings in self.models:
            own = tuple(k for k in _may_fire(bundle, settings) if WakeWord(bundle.name, k) in wanted)
            if own:
                heads.append(ModelHead(bundle, dataclasses.replace(settings, keywords=own)))
        return MultiSpotter(heads) if heads else None

    def info(self, languages: Sequence[str]) -> Info:
        """The ``info`` event's content: the program ``kws`` and one wake model per keyword."""
        attribution = Attribution(name="kws", url="")
        bundles = {bundle.name: bundle for bundle, _ in self.models}
        models = [_artifact(WakeModel, name=word.name, description=f"{word.keyword} ({word.model})",
                            phrase=word.keyword, attribution=attribution, installed=True,
                            languages=list(languages), version=bundles[word.model].sha256[:12])
                  for word in self.wake_words]
        program = _artifact(WakeProgram, name=PROGRAM_NAME, description="kws: on-device keyword spotting",
                            attribution=attribution, installed=True, version=__version__, models=models)
        return Info(wake=[program])


def _may_fire(bundle: Bundle, settings: DetectorSettings) -> tuple[str, ...]:
    """The keywords ``settings`` let fire (None: all of the bundle's; an empty tuple: none)."""
    return bundle.keywords if settings.keywords is None else tuple(settings.keywords)


def _artifact(cls, **values):
    """``cls(**values)`` without the fields this version of ``wyoming`` lacks (1.5 has no ``phrase``, ``version``)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})


# --------------------------------------------------------------------------- one connection's stream


class PcmConverter:
    """Interleaved little-endian PCM (any rate, 1-4 byte samples, any channels) -> float32 mono at ``to_hz``.

    Keeps its state across chunks: partial frames and the resampler's history.
    """

    def __init__(self, rate_hz: int, width_bytes: int, channels: int, to_hz: int):
        if not (isinstance(rate_hz, int) and rate_hz > 0):
            raise AudioError(f"audio rate {rate_hz!r} Hz: must be a positive whole number")
        if width_bytes not in SAMPLE_WIDTHS_BYTES:
            raise AudioError(f"audio width {width_bytes!r} bytes: kws reads 1, 2, 3 or 4-byte samples")
        if not (isinstance(channels, int) and channels > 0):
            raise AudioError(f"audio channels {channels!r}: must be a positive whole number")
        self.rate_hz, self.width_bytes, self.channels = rate_hz, width_bytes, channels
        self.frame_bytes = width_bytes * channels
        self._remainder = b""
        self._resampler = None
        if rate_hz != to_hz:
            from kws.resample import StreamingResampler

            self._resampler = StreamingResampler(rate_hz, to_hz)

    def same_format(self, rate_hz: int, width_bytes: int, channels: int) -> bool:
        return (rate_hz, width_bytes, channels) == (self.rate_hz, self.width_bytes, self.channels)

    def convert(self, data: bytes) -> np.ndarray:
        data = self._remainder + data
        usable = len(data) - len(data) % self.frame_bytes
        self._remainder = data[usable:]
        samples = decode_pcm(data[:usable], self.width_bytes)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return self._resampler.process(samples) if self._resampler is not None else samples


def decode_pcm(data: bytes, width_bytes: int) -> np.ndarray:
    """Little-endian PCM samples as float32 in [-1, 1): 8-bit unsigned (WAV's convention), else signed."""
    raw = np.frombuffer(data, np.uint8)
    if width_bytes == 1:
        return (raw.astype(np.float32) - 128.0) / 128.0
    if width_bytes == 2:
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    if width_bytes == 4:
        return (np.frombuffer(data, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if width_bytes == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    raise AudioError(f"audio width {width_bytes} bytes: kws reads 1, 2, 3 or 4-byte samples")


@dataclass(frozen=True)
class WakeHit:
    """A wake word heard on one connection."""

    name: str
    """The wake word's name as the client asked for it (``MODEL/keyword`` when it named none)."""
    timestamp_ms: int
    """Where in the stream, in the client's time base (see the module docstring)."""
    detection: Detection


class WakeSession:
    """One connection's audio: ``select`` wake words, ``start`` a stream, ``feed`` PCM, ``stop``; hits out.

    Knows nothing of the protocol, only of the audio and the names.
    """

    def __init__(self, engine: WakeEngine):
        self.engine = engine
        self.fired = False
        """Whether a wake word fired since the last ``start`` or ``select``."""
        self._names, _ = engine.select(None)
        self._spotter: MultiSpotter | None = None
        self._spotter_stale = True
        self._converter: PcmConverter | None = None
        self._base_ms: int | None = None
        self._audio_s = 0.0
        self._spotter_origin_s = 0.0  # stream position where the spotter started
        self.streaming = False
        """Between ``start`` (or a first ``feed``) and ``stop``."""

    def select(self, names: Sequence[str] | None) -> list[str]:
        """Listen for these wake words from now on (None or empty: all); returns the names not known."""
        self._names, unknown = self.engine.select(names)
        self._spotter_stale = True
        self.fired = False
        if self.streaming:  # a new request mid-stream: new detectors from here on, same time base
            self._spotter = self._build_spotter()
            self._spotter_origin_s = self._audio_s
        return unknown

    @property
    def listening_for(self) -> list[str]:
        return sorted(set(self._names.values()))

    def _build_spotter(self) -> MultiSpotter | None:
        if self._spotter is not None:
            self._spotter.close()
        self._spotter_stale = False
        return self.engine.spotter(self._names)

    def start(self, rate_hz: int, width_bytes: int, channels: int, timestamp_ms: int | None = None) -> None:
        """A new stream: fresh detector state, time counted from here (from ``timestamp_ms`` if given)."""
        self._converter = PcmConverter(rate_hz, width_bytes, channels, self.engine.sample_rate_hz)
        if self._spotter_stale or self._spotter is None:
            self._spotter = self._build_spotter()
        else:
            self._spotter.reset()
        self._base_ms = timestamp_ms
        self._audio_s = 0.0
        self._spotter_origin_s = 0.0
        self.fired = False
        self.streaming = True

    def feed(self, pcm: bytes, rate_hz: int, width_bytes: int, channels: int,
             timestamp_ms: int | None = None) -> list[WakeHit]:
        """One chunk of PCM; a chunk without a ``start`` before it starts a stream."""
        if not self.streaming:
            self.start(rate_hz, width_bytes, channels, timestamp_ms)
        elif not self._converter.same_format(rate_hz, width_bytes, channels):
            _LOGGER.info("audio format changed mid-stream to %d Hz, %d bytes, %d channel(s)", rate_hz, width_bytes,
                         channels)
            self._converter = PcmConverter(rate_hz, width_bytes, channels, self.engine.sample_rate_hz)
        if self._base_ms is None:
            self._base_ms = timestamp_ms if timestamp_ms is not None else 0
        self._audio_s += len(pcm) // self._converter.frame_bytes / rate_hz
        audio = self._converter.convert(pcm)
        return self._hits(self._spotter.feed(audio) if self._spotter is not None else [])

    def stop(self) -> list[WakeHit]:
        """End of the stream: silence so a keyword at the very end still fills a window, as ``kws detect`` does."""
        hits = []
        if self.streaming and self._spotter is not None:
            silence = np.zeros(int(self._spotter.window_s * self._spotter.sample_rate_hz), np.float32)
            hits = self._hits(self._spotter.feed(silence))
        self.streaming = False
        return hits

    def close(self) -> None:
        if self._spotter is not None:
            self._spotter.close()
            self._spotter = None

    def _hits(self, detections: Sequence[Detection]) -> list[WakeHit]:
        hits = []
        for detection in detections:
            name = self._names.get(WakeWord(detection.model, detection.keyword))
            if name is None:  # cannot happen: the spotter fires only the selected words
                continue
            self.fired = True
            offset_ms = round(1000 * min(self._spotter_origin_s + detection.offset_s, self._audio_s))
            hits.append(WakeHit(name, (self._base_ms or 0) + offset_ms, detection))
        return hits


# --------------------------------------------------------------------------- the protocol


class WakeHandler(AsyncEventHandler):
    """The events of one connection, turned into ``WakeSession`` calls and answered."""

    def __init__(self, engine: WakeEngine, settings: ServerSettings,
                 on_detection: Callable[[Detection], None] | None,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self.engine = engine
        self.settings = settings
        self.on_detection = on_detection
        self.session = WakeSession(engine)
        peer = writer.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "local client"

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.engine.info(self.settings.languages).event())
        elif Detect.is_type(event.type):
            names = Detect.from_event(event).names
            unknown = self.session.select(names)
            if unknown:
                _LOGGER.warning("%s asked for unknown wake word(s) %s; known: %s", self.client, ", ".join(unknown),
                                ", ".join(w.name for w in self.engine.wake_words))
            if names and not self.session.listening_for:
                await self.write_event(Error(text=f"unknown wake word(s) {', '.join(unknown)}; this server has "
                                                  + ", ".join(w.name for w in self.engine.wake_words),
                                             code="unknown-wake-word").event())
            _LOGGER.debug("%s listens for %s", self.client, ", ".join(self.session.listening_for) or "nothing")
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            try:
                self.session.start(start.rate, start.width, start.channels, start.timestamp)
            except AudioError as error:
                return await self._refuse(error)
            _LOGGER.debug("%s: audio started (%d Hz, %d bytes, %d channel(s))", self.client, start.rate, start.width,
                          start.channels)
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            try:
                hits = self.session.feed(chunk.audio, chunk.rate, chunk.width, chunk.channels, chunk.timestamp)
            except AudioError as error:
                return await self._refuse(error)
            await self._report(hits)
        elif AudioStop.is_type(event.type):
            await self._report(self.session.stop())
            if not self.session.fired:
                await self.write_event(NotDetected().event())
                _LOGGER.debug("%s: audio stopped, nothing detected", self.client)
        else:
            _LOGGER.debug("%s: ignoring event %s", self.client, event.type)
        return True

    async def _report(self, hits: Sequence[WakeHit]) -> None:
        for hit in hits:
            d = hit.detection
            _LOGGER.info("%s: detected %s (%s of %s, score %.3f) at %d ms", self.client, hit.name, d.keyword, d.model,
                         d.score, hit.timestamp_ms)
            await self.write_event(WyomingDetection(name=hit.name, timestamp=hit.timestamp_ms).event())
            if self.on_detection is not None:
                self.on_detection(d)

    async def _refuse(self, error: AudioError) -> bool:
        _LOGGER.warning("%s: %s; closing the connection", self.client, error)
        await self.write_event(Error(text=str(error), code="bad-audio-format").event())
        return False


async def serve(engine: WakeEngine, settings: ServerSettings,
                on_detection: Callable[[Detection], None] | None = None) -> None:
    """Listen until SIGTERM or SIGINT; each connection gets its own ``WakeHandler``."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    connections: set[asyncio.Task] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        connections.add(task)
        handler = WakeHandler(engine, settings, on_detection, reader, writer)
        _LOGGER.debug("%s connected", handler.client)
        try:
            await handler.run()
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            _LOGGER.debug("%s: connection lost (%s)", handler.client, error)
        except asyncio.CancelledError:
            pass  # the server is stopping
        except Exception:  # the supervisor of one connection: a bug there must not end the others
            _LOGGER.exception("%s: the connection failed", handler.client)
        finally:
            handler.session.close()
            writer.close()
            connections.discard(task)
            _LOGGER.debug("%s disconnected", handler.client)

    kind, where, port = settings.address
    try:
        if kind == "tcp":
            server = await asyncio.start_server(connection, host=where, port=port)
        else:
            server = await asyncio.start_unix_server(connection, path=where)
    except OSError as error:
        raise ConfigError(f"cannot listen on {settings.uri}: {error.strerror or error}"
                          + ("; is another server using the port? stop it or choose another --uri"
                             if kind == "tcp" else "; check the folder and its permissions")) from None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    bound = settings.uri
    if kind == "tcp":
        sockets = server.sockets or ()
        ports = sorted({s.getsockname()[1] for s in sockets})
        bound = f"tcp://{where}:{ports[0] if ports else port}"
    _LOGGER.info("listening on %s; wake words %s", bound, ", ".join(w.name for w in engine.wake_words))
    try:
        await stopping.wait()
        _LOGGER.info("stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        server.close()
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.wait(list(connections), timeout=STOP_GRACE_S)
        if kind == "unix":
            Path(where).unlink(missing_ok=True)


def run_server(engine: WakeEngine, settings: ServerSettings,
               on_detection: Callable[[Detection], None] | None = None) -> int:
    """``serve`` until stopped; exit status 0."""
    asyncio.run(serve(engine, settings, on_detection))
    return 0
