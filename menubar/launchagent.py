"""Launch at Login: a LaunchAgent plist in ~/Library/LaunchAgents (no helper app, no
login-items API); launchd starts the app at the next login while the file exists."""

from __future__ import annotations

import os
import plistlib
import sys
import tempfile
from pathlib import Path

from menubar import BUNDLE_ID


def agent_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{BUNDLE_ID}.plist"


def program_arguments() -> list[str]:
    """How launchd should start this app: the .app bundle when frozen by py2app, else this Python."""
    if getattr(sys, "frozen", None) == "macosx_app" and os.environ.get("RESOURCEPATH"):
        bundle = Path(os.environ["RESOURCEPATH"]).resolve().parents[1]  # …/X.app/Contents/Resources
        return ["/usr/bin/open", "-a", str(bundle)]
    return [sys.executable, "-m", "menubar"]


class LaunchAgent:
    def __init__(self, path: Path | None = None, program: list[str] | None = None):
        self.path = path or agent_path()
        self.program = program or program_arguments()

    def enabled(self) -> bool:
        return self.path.exists()

    def set(self, on: bool) -> None:
        self.enable() if on else self.disable()

    def enable(self) -> None:
        plist = {
            "Label": BUNDLE_ID,
            "ProgramArguments": self.program,
            "RunAtLoad": True,
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",  # only in a GUI login, where a menubar exists
            # `-m menubar` must find the package even when it is not pip-installed.
            "WorkingDirectory": str(Path(__file__).resolve().parents[1]),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".agent.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                plistlib.dump(plist, f)
            os.chmod(tmp, 0o644)  # launchd ignores agents that group/others can write
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)
