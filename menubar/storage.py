"""Where the app keeps its files, and private (0600 in a 0700 folder) JSON writes.

Captions and history can describe anything the user copied or saw on screen,
so nothing here is readable by other users, and writes are atomic (a crash
mid-write leaves the previous file, never half a JSON document).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from menubar import APP_NAME

DIR_MODE = 0o700
FILE_MODE = 0o600


def data_dir() -> Path:
    """~/Library/Application Support/<app> on macOS, $XDG_DATA_HOME (or ~/.local/share)/<app> elsewhere."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / APP_NAME.lower().replace(" ", "-")


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make the leaf 0700 whatever the umask or an older run left."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def write_private_json(path: Path, value) -> None:
    """Write JSON atomically as a 0600 file (temp file in the same folder, then rename)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=1)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: Path, default):
    """The file's JSON, or `default` when it is missing or unreadable (never raises)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
