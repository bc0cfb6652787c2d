"""Notifications that never crash the app.

`rumps.notification` raises under a plain venv Python (no bundle id, so no
notification center); then `osascript` posts it instead. The text goes to
AppleScript as argv, not spliced into the script, so quotes, backslashes and
newlines in a caption cannot break (or inject into) the script.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

# `on run argv` receives the strings after the script on osascript's command line.
OSASCRIPT = ["/usr/bin/osascript",
             "-e", "on run argv",
             "-e", "display notification (item 2 of argv) with title (item 1 of argv)",
             "-e", "end run"]
MAX_CHARS = 400  # Notification Center truncates anyway; keep the argv small


def applescript_quote(text: str) -> str:
    """`text` as an AppleScript string literal (for callers that must build a script)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Notifier:
    def __init__(self, rumps_module=None, run: Callable = subprocess.run, log: Callable[[str], None] | None = None):
        self.rumps = rumps_module
        self.run = run
        self.log = log or (lambda line: print(f"menubar: {line}", file=sys.stderr))
        self.use_rumps = rumps_module is not None  # turned off after the first failure

    def __call__(self, title: str, message: str) -> str:
        """Post; returns the route taken: "rumps", "osascript" or "none"."""
        title, message = _clip(title), _clip(message)
        if self.use_rumps:
            try:
                self.rumps.notification(title, "", message)
                return "rumps"
            except Exception as e:  # no bundle id / Info.plist: fall back from now on
                self.use_rumps = False
                self.log(f"notification center unavailable ({type(e).__name__}); using osascript")
        try:
            self.run(OSASCRIPT + [title, message], check=False, timeout=10,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return "osascript"
        except Exception as e:  # no osascript (not a Mac) or it hung: the result is still copied
            self.log(f"could not post a notification ({type(e).__name__}: {e})")
            return "none"


def _clip(text: str) -> str:
    text = "".join(c if c.isprintable() or c in "\n\t" else " " for c in str(text))
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
