"""A one-line progress bar on stderr (tqdm is not a runtime dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """On a terminal the line is redrawn in place; in a log only every quarter is printed."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 28):
        self.label, self.width = label, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_quarter = 0  # a log gets lines at 25, 50, 75 and 100%

    def __call__(self, done: int, total: int, item: str = "") -> None:
        frac = done / total if total else 1.0
        elapsed = time.perf_counter() - self.start
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        text = f"{self.label} [{bar}] {done}/{total} {elapsed:5.1f}s"
        if self.tty:
            tail = f" {item}"[: 60]
            self.stream.write("\r" + text + tail + "\033[K")
            if done >= total:
                self.stream.write("\n")
        elif int(frac * 4) > self.last_quarter:
            self.last_quarter = int(frac * 4)
            self.stream.write(text + "\n")
        self.stream.flush()
