"""Streaming polyphase resampling for microphones that do not offer 16 kHz.

Chunks of any size in, the same output as resampling the whole signal at once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def lowpass_taps(length: int, cutoff: float, kaiser_beta: float = 8.0) -> np.ndarray:
    """Windowed-sinc low-pass FIR (Kaiser window), unit gain at DC.

    ``cutoff`` is in units of the Nyquist frequency; the same taps as
    ``scipy.signal.firwin(length, cutoff, window=("kaiser", kaiser_beta))``,
    without importing SciPy on the listening path (it costs 0.6 s and 70 MB).
    """
    offsets = np.arange(length) - (length - 1) / 2
    taps = cutoff * np.sinc(cutoff * offsets) * np.kaiser(length, kaiser_beta)
    return taps / taps.sum()


class StreamingResampler:
    """Rational-ratio FIR resampler (``from_hz`` -> ``to_hz``) that keeps its state across chunks."""

    def __init__(self, from_hz: int, to_hz: int, taps_per_phase: int = 24):
        ratio = Fraction(int(to_hz), int(from_hz))
        self.up, self.down = ratio.numerator, ratio.denominator
        self.from_hz, self.to_hz = int(from_hz), int(to_hz)
        cutoff = 0.95 / max(self.up, self.down)  # just below the lower Nyquist, in units of the upsampled Nyquist
        length = taps_per_phase * self.up
        prototype = lowpass_taps(length, cutoff) * self.up
        # phases[p, m] multiplies x[i - m] for outputs whose upsampled position is i * up + p
        self._phases = prototype.reshape(taps_per_phase, self.up).T.astype(np.float32)
        self._taps = taps_per_phase
        self.delay_s = (length - 1) / 2 / (self.from_hz * self.up)
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(self._taps - 1, np.float32)
        self._consumed = 0  # input samples seen, excluding the zero history
        self._produced = 0  # output samples given out

    def process(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if self.up == self.down:
            return chunk.copy()
        buffer = np.concatenate([self._history, chunk])
        total = self._consumed + chunk.size
        # output n needs input index floor(n * down / up) (absolute), which must exist
        last = (total * self.up - 1) // self.down  # largest n with n*down < total*up
        n = np.arange(self._produced, last + 1)
        if n.size == 0:
            self._history = buffer[-(self._taps - 1):] if self._taps > 1 else buffer[:0]
            self._consumed = total
            return np.zeros(0, np.float32)
        position = n * self.down
        index = position // self.up  # absolute input index of the newest tap
        phase = position % self.up
        local = index - (self._consumed - (self._taps - 1))  # index into buffer
        gather = local[:, None] - np.arange(self._taps)[None, :]
        out = np.einsum("nk,nk->n", buffer[gather], self._phases[phase])
        self._produced = int(last) + 1
        self._consumed = total
        self._history = buffer[-(self._taps - 1):]
        return out.astype(np.float32)
