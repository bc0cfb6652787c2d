"""Notifications that never crash the app.

The route follows the main bundle's identifier (`NSBundle.mainBundle()`):
- inside the .app (our bundle id): UNUserNotificationCenter, shown as the app
  (rumps.notification's NSUserNotification is deprecated and hidden while the
  app is frontmost; it stays as the fallback);
- anywhere else: `osascript`. Under a framework Python's venv the main bundle is
  `org.python.python`, where rumps.notification does not raise but posts as
  "Python", which is dropped unless Python is allowed to notify.
The text goes to AppleScript as argv, not spliced into the script, so quotes,
backslashes and newlines in a caption cannot break (or inject into) the script.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

from menubar import BUNDLE_ID

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
    """`bundle_id`: the main bundle's identifier; `native`: makes the UNUserNotificationCenter
    poster (menubar.macos.UserNotifications), called only inside our bundle."""

    def __init__(self, rumps_module=None, run: Callable = subprocess.run, log: Callable[[str], None] | None = None,
                 *, bundle_id: str | None = None, native: Callable[[], Callable[[str, str], None]] | None = None):
        self.rumps = rumps_module
        self.run = run
        self.log = log or (lambda line: print(f"menubar: {line}", file=sys.stderr))
        self.in_bundle = bundle_id == BUNDLE_ID
        self.routes = ["native", "rumps", "osascript"] if self.in_bundle else ["osascript"]
        if rumps_module is None and "rumps" in self.routes:
            self.routes.remove("rumps")
        self._native_factory, self._poster = native, None
        if native is None and "native" in self.routes:
            self.routes.remove("native")

    @property
    def route(self) -> str:
        return self.routes[0] if self.routes else "none"

    def __call__(self, title: str, message: str) -> str:
        """Post; returns the route taken: "native", "rumps", "osascript" or "none"."""
        title, message = _clip(title), _clip(message)
        while self.routes:
            route = self.routes[0]
            try:
                getattr(self, f"_{route}")(title, message)
                return route
            except Exception as e:  # this route is unavailable here: use the next one from now on
                self.routes.pop(0)
                self.log(f"notifications via {route} failed ({type(e).__name__}: {e}); "
                         f"now {self.route}")
        return "none"

    def _native(self, title: str, message: str) -> None:
        if self._poster is None:
            self._poster = self._native_factory()
        self._poster(title, message)

    def _rumps(self, title: str, message: str) -> None:
        self.rumps.notification(title, "", message)

    def _osascript(self, title: str, message: str) -> None:
        self.run(OSASCRIPT + [title, message], check=False, timeout=10,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _clip(text: str) -> str:
    text = "".join(c if c.isprintable() or c in "\n\t" else " " for c in str(text))
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
