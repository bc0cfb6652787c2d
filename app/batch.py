"""Batch helpers for the CLI: which images to caption, the resumable JSONL log,
and a dependency-free progress bar. Standard library only."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from captioning.errors import Exit

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif",
                    ".avif", ".jfif", ".ppm", ".pgm", ".pbm", ".tga", ".ico", ".jp2"}
GLOB_CHARS = set("*?[")


@dataclass
class Source:
    """One image to caption: a file, or bytes already in hand (stdin, clipboard, screen)."""

    name: str  # what the user sees ("photo.jpg", "-", "clipboard", "screen")
    path: str | None = None
    data: bytes | None = None
    error: str | None = None  # set when the input itself is already known to be bad
    code: int = Exit.OK  # exit code for that error

    @property
    def label(self) -> str:
        """The name in messages."""
        return "stdin" if self.name == "-" and self.path is None else self.name

    @property
    def key(self) -> str:
        """Identity in the JSONL log: the absolute path, so a resume from another folder works."""
        return os.path.abspath(self.path) if self.path else self.name


def expand(args: list[str]) -> list[Source]:
    """Files as given; folders → their images (top level, sorted, no dot files);
    globs → matches (`**` recurses). `-` and unknown names are kept as sources
    (stdin, or an error line for the user), so every argument is answered."""
    out: list[Source] = []
    seen: set[str] = set()

    def add(src: Source) -> None:
        if src.path:
            key = os.path.realpath(src.path)
            if key in seen:
                return
            seen.add(key)
        out.append(src)

    for arg in args:
        if arg.startswith("~"):  # quoted in the shell, or from Shortcuts: expand it ourselves
            arg = os.path.expanduser(arg)
        if arg == "-":
            out.append(Source("-"))
        elif os.path.isdir(arg):
            images = sorted(e.path for e in os.scandir(arg)
                            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
                            and e.is_file())
            if not images:
                out.append(Source(arg, error=f"{arg}: no images in this folder", code=Exit.IMAGE))
            for p in images:
                add(Source(p, path=p))
        elif os.path.exists(arg) or not GLOB_CHARS & set(arg):
            add(Source(arg, path=arg))  # a missing file is reported when it is read
        else:
            matches = sorted(p for p in glob.glob(arg, recursive=True)
                             if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not matches:
                out.append(Source(arg, error=f"{arg}: no image files match", code=Exit.IMAGE))
            for p in matches:
                add(Source(p, path=p))
    return out


def _records(raw: bytes) -> dict[str, dict]:
    """path → record of each whole JSON line with a string "path" (torn or foreign lines skipped)."""
    records = {}
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            records[record["path"]] = record
    return records


class JsonlLog:
    """Append-only results file that survives a crash: one JSON object per line,
    each flushed and fsynced before the next image starts. A record cut short by a
    crash is cut off on the next run (its image is redone), so the file stays
    valid JSON Lines for other tools."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        raw = self.path.read_bytes() if self.path.exists() else b""
        self.done = set(_records(raw))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tail = raw[raw.rfind(b"\n") + 1:]
        torn = tail.startswith(b'{"path": ') and not _records(tail)  # ours, cut short: nothing else is removed
        if torn:
            os.truncate(self.path, len(raw) - len(tail))
        self.file = open(self.path, "a", encoding="utf-8")
        if tail and not torn:  # a last line without its newline: never glue ours to it
            self.file.write("\n")

    @staticmethod
    def records(path: str | os.PathLike) -> dict[str, dict]:
        """The records a log holds by path (none if it does not exist; a later line for a
        path wins), without opening it for writing."""
        return _records(Path(path).read_bytes()) if os.path.exists(path) else {}

    def __contains__(self, source: Source) -> bool:
        return source.path is not None and source.key in self.done

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done.add(record["path"])

    def close(self) -> None:
        self.file.close()


class Progress:
    """`[#####-----] 3/10  name` redrawn in place on stderr (a terminal only).
    `clear()` before printing anything else, `show()` afterwards."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, enabled: bool | None = None):
        self.total, self.stream, self.count, self.name = total, stream, 0, ""
        self.enabled = (total > 1 and stream.isatty()) if enabled is None else enabled
        self.drawn = False  # clear only a bar that is on screen: stdout may share the line
        self.start = time.monotonic()

    def step(self, name: str) -> None:
        self.name = name
        self.show()

    def advance(self) -> None:
        self.count += 1
        self.show()

    def show(self) -> None:
        if not self.enabled:
            return
        width = 24
        filled = width * self.count // max(self.total, 1)
        eta = ""
        if 0 < self.count < self.total:
            left = (time.monotonic() - self.start) / self.count * (self.total - self.count)
            eta = f" ~{left:.0f}s left"
        name = self.name if len(self.name) <= 40 else "…" + self.name[-39:]
        self.stream.write(f"\r\033[K[{'#' * filled}{'-' * (width - filled)}] {self.count}/{self.total}{eta}  {name}")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False
