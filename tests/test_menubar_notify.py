"""Notifications: the route follows the main bundle's identifier, as macOS decides who posts.

The fakes copy what each API does with each main bundle:
- rumps.notification (NSUserNotificationCenter): raises RuntimeError when the process has no
  bundle id (rumps/notifications.py, _default_user_notification_center); under a framework
  Python's venv the main bundle is org.python.python, where it posts *as Python*, which
  macOS drops unless Python may notify;
- UNUserNotificationCenter.currentNotificationCenter() fails outright outside a real bundle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from menubar import BUNDLE_ID
from menubar.notify import OSASCRIPT, Notifier, applescript_quote

PYTHON_BUNDLE = "org.python.python"


class Mac:
    """Who a notification appears to come from, per route, for one main bundle."""

    def __init__(self, bundle_id: str | None):
        self.bundle_id = bundle_id
        self.shown: list[tuple[str, str, str]] = []  # (shown as, title, message)
        self.osascript_runs: list[list[str]] = []

    # rumps
    def notification(self, title, subtitle, message):
        if self.bundle_id is None:
            raise RuntimeError('Failed to setup the notification center. This issue occurs when the "Info.plist" '
                               'file cannot be found or is missing "CFBundleIdentifier".')
        sender = "Python" if self.bundle_id == PYTHON_BUNDLE else self.bundle_id
        self.shown.append((sender, title, message))

    # UNUserNotificationCenter
    def native(self):
        if self.bundle_id != BUNDLE_ID:
            raise RuntimeError("bundleProxyForCurrentProcess is nil")  # NSInternalInconsistencyException
        return lambda title, message: self.shown.append((self.bundle_id, title, message))

    # subprocess.run
    def run(self, cmd, **kw):
        assert cmd[: len(OSASCRIPT)] == OSASCRIPT and kw.get("timeout")
        self.osascript_runs.append(cmd)
        self.shown.append(("osascript", *cmd[len(OSASCRIPT):]))


def notifier(mac: Mac, logs: list | None = None) -> Notifier:
    return Notifier(mac, run=mac.run, log=(logs if logs is not None else []).append, bundle_id=mac.bundle_id,
                    native=mac.native)


@pytest.mark.parametrize("bundle_id", [PYTHON_BUNDLE, None])
def test_outside_the_bundle_osascript_posts_and_never_as_python(bundle_id):
    mac = Mac(bundle_id)
    notify = notifier(mac)
    tricky = 'He said "hi" \\ then; end run\n-- do shell script "rm -rf ~"'
    assert notify('Caption "1"', tricky) == "osascript"
    assert mac.osascript_runs[0][len(OSASCRIPT):] == ['Caption "1"', tricky]  # argv, not script text
    assert [s for s, *_ in mac.shown] == ["osascript"]  # nothing posted as "Python"


def test_inside_the_bundle_the_notification_center_posts_as_the_app():
    mac = Mac(BUNDLE_ID)
    notify = notifier(mac)
    assert notify("Caption", "a cat") == "native" and notify("Caption", "a dog") == "native"
    assert mac.shown == [(BUNDLE_ID, "Caption", "a cat"), (BUNDLE_ID, "Caption", "a dog")]
    assert mac.osascript_runs == []


def test_each_failing_route_is_dropped_for_the_next():
    mac, logs = Mac(BUNDLE_ID), []
    notify = notifier(mac, logs)
    calls = []

    def broken_native():
        calls.append(1)
        raise RuntimeError("UserNotifications is not installed")
    notify._native_factory = broken_native
    assert notify("t", "m") == "rumps" and notify("t", "m2") == "rumps"
    assert calls == [1] and "native" in logs[0]  # not retried
    mac.bundle_id = None  # rumps now raises: osascript from then on
    assert notify("t", "m3") == "osascript" and notify.route == "osascript"


def test_notification_never_raises_and_clips():
    def broken(cmd, **kw):
        raise FileNotFoundError("osascript")

    notify = Notifier(None, run=broken, log=lambda line: None)
    assert notify("t", "m" * 10_000) == "none" and notify("t", "m") == "none"


def test_applescript_quote_escapes_quotes_and_backslashes():
    assert applescript_quote('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_osascript_fallback_really_runs_when_present():
    if not Path("/usr/bin/osascript").exists():
        pytest.skip("macOS only")
    assert Notifier(None)("MLX Caption test", 'quotes " and \\ survive') == "osascript"
