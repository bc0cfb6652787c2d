"""Launch at Login: a LaunchAgent plist in ~/Library/LaunchAgents (no helper app, no
login-items API); launchd starts the app at the next login while the file exists.

The plist holds absolute paths, so moving the app (dist/ → /Applications) would break
it silently: `refresh()`, run at every start, rewrites an existing plist for where the
app is now. The agent's stdout/stderr go to ~/Library/Logs/MLX Caption/launch-agent.log."""

from __future__ import annotations

import os
import plistlib
import sys
import tempfile
from pathlib import Path

from menubar import APP_NAME, BUNDLE_ID


def agent_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{BUNDLE_ID}.plist"


def log_path() -> Path:
    return Path.home() / "Library" / "Logs" / APP_NAME / "launch-agent.log"


def app_bundle() -> Path | None:
    """The .app this runs from when frozen by py2app (RESOURCEPATH is …/X.app/Contents/Resources)."""
    if getattr(sys, "frozen", None) == "macosx_app" and os.environ.get("RESOURCEPATH"):
        return Path(os.environ["RESOURCEPATH"]).resolve().parents[1]
    return None


def program_arguments(bundle: Path | None = None) -> list[str]:
    """How launchd should start this app: the bundle's own executable (so its stderr reaches
    the log; the bundle's Info.plist names it), else this Python with `-m menubar`."""
    bundle = bundle or app_bundle()
    if bundle is not None:
        try:
            info = plistlib.loads((bundle / "Contents" / "Info.plist").read_bytes())
            executable = info.get("CFBundleExecutable") or APP_NAME
        except (OSError, plistlib.InvalidFileException):
            executable = APP_NAME
        return [str(bundle / "Contents" / "MacOS" / executable)]
    return [sys.executable, "-m", "menubar"]


def working_directory(bundle: Path | None = None) -> str | None:
    """Where `-m menubar` finds the package when it is not pip-installed: this checkout.
    None for the bundle (it carries its packages) and when the package sits in a zip."""
    if (bundle or app_bundle()) is not None:
        return None
    root = Path(__file__).resolve().parents[1]
    return str(root) if root.is_dir() and (root / "menubar").is_dir() else None


class LaunchAgent:
    def __init__(self, path: Path | None = None, program: list[str] | None = None,
                 workdir: str | None = None, log: Path | None = None):
        self.path = path or agent_path()
        self.program = program or program_arguments()
        self.workdir = workdir if program else working_directory()
        self.log = log or log_path()

    def enabled(self) -> bool:
        return self.path.exists()

    def set(self, on: bool) -> None:
        self.enable() if on else self.disable()

    def plist(self) -> dict:
        plist = {
            "Label": BUNDLE_ID,
            "ProgramArguments": list(self.program),
            "RunAtLoad": True,
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",  # only in a GUI login, where a menubar exists
            "StandardOutPath": str(self.log),
            "StandardErrorPath": str(self.log),
        }
        if self.workdir:
            plist["WorkingDirectory"] = self.workdir
        return plist

    def refresh(self) -> bool:
        """Rewrite an existing agent whose paths are not this app's any more (the app moved,
        the venv changed); True when it did. No file, nothing to do: the user turned it off."""
        try:
            current = plistlib.loads(self.path.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, plistlib.InvalidFileException, ValueError):
            current = None
        if current == self.plist():
            return False
        self.enable()
        return True

    def enable(self) -> None:
        plist = self.plist()
        self.log.parent.mkdir(parents=True, exist_ok=True)  # launchd does not create it
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
