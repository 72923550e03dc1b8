"""Where the time goes: named stages, summed, printed at the end of a command."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

_LOGGER = logging.getLogger(__name__)


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def report(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        lines = [f"  {name:<24} {secs:8.1f} s  {100 * secs / total:5.1f}%" for name, secs in
                 sorted(self.seconds.items(), key=lambda kv: -kv[1])]
        return ("time by stage (a stage on the prefetch thread, such as teacher targets, overlaps fit; "
                "'waiting for epoch data' is what it did not hide):\n" + "\n".join(lines))
