"""The few macOS services the menubar app uses, each behind a small function so the rest
of the app (and its tests) never import pyobjc directly:

- `bundle_identifier()`   the main bundle's id: ours inside the .app, `org.python.python`
                          (or None) when run from a venv's Python
- `call_on_main(fn)`      run `fn` on the main thread's run loop, in every run-loop mode
                          (PyObjCTools.AppHelper.callAfter: performSelectorOnMainThread,
                          which queues in the common modes, so it also runs while a menu is
                          open or a modal dialog runs; a rumps.Timer does not)
- `Activity`              NSProcessInfo begin/endActivity while jobs run, so App Nap does
                          not slow a menubar-only app that has no window
- `bring_to_front(alert)` activate the app and raise an NSAlert's window before it runs
- `choose_files(title)`   an NSOpenPanel for image files (several at once); the chosen paths
- `UserNotifications`     posting through UNUserNotificationCenter (needs a real bundle)
"""

from __future__ import annotations

import sys
import uuid
from typing import Callable


def bundle_identifier() -> str | None:
    try:
        from Foundation import NSBundle
    except ImportError:
        return None
    bundle = NSBundle.mainBundle()
    return str(bundle.bundleIdentifier()) if bundle is not None and bundle.bundleIdentifier() else None


def call_on_main(fn: Callable, *args) -> None:
    from PyObjCTools.AppHelper import callAfter

    callAfter(fn, *args)


class Activity:
    """Holds an NSProcessInfo activity while `busy` (user-initiated work, idle sleep allowed)."""

    REASON = "Captioning an image"

    def __init__(self, process_info=None, options: int | None = None):
        if process_info is None:
            from Foundation import NSActivityUserInitiatedAllowingIdleSystemSleep, NSProcessInfo

            process_info, options = NSProcessInfo.processInfo(), NSActivityUserInitiatedAllowingIdleSystemSleep
        self.process_info, self.options = process_info, options
        self.token = None

    def hold(self, busy: bool) -> None:
        if busy and self.token is None:
            self.token = self.process_info.beginActivityWithOptions_reason_(self.options, self.REASON)
        elif not busy and self.token is not None:
            token, self.token = self.token, None
            self.process_info.endActivity_(token)

    def on_worker_state(self, state: str, detail: str = "") -> None:
        """A Worker listener: hold the activity while a model loads or a job runs."""
        self.hold(state in ("loading", "busy"))


def bring_to_front(window=None) -> None:
    """Activate this (accessory) app and raise `window`, so a dialog opens in front and takes
    the keyboard (rumps.Window may otherwise open behind the front app on macOS 15)."""
    from AppKit import NSApplication, NSFloatingWindowLevel

    NSApplication.sharedApplication().activateIgnoringOtherApps_(True)
    if window is not None:
        window.setLevel_(NSFloatingWindowLevel)
        window.makeKeyAndOrderFront_(None)


_presenter_class = []


def _presenter():
    """A UNUserNotificationCenter delegate that shows banners even while the app is frontmost
    (it is, right after a dialog); defined once, as Objective-C class names are global."""
    if not _presenter_class:
        import objc
        import UserNotifications as UN
        from Foundation import NSObject

        options = UN.UNNotificationPresentationOptionBanner | UN.UNNotificationPresentationOptionList

        class MLXCaptionNotificationPresenter(NSObject, protocols=[objc.protocolNamed(
                "UNUserNotificationCenterDelegate")]):
            def userNotificationCenter_willPresentNotification_withCompletionHandler_(self, center, note, done):
                done(options)

        _presenter_class.append(MLXCaptionNotificationPresenter)
    return _presenter_class[0].alloc().init()


class UserNotifications:
    """Posts through UNUserNotificationCenter; asks for permission once, at creation."""

    def __init__(self, log: Callable[[str], None] = lambda line: print(f"menubar: {line}", file=sys.stderr)):
        import UserNotifications as UN

        self.UN, self.log = UN, log
        self.center = UN.UNUserNotificationCenter.currentNotificationCenter()
        self.delegate = _presenter()  # the center keeps a weak reference: hold it here
        self.center.setDelegate_(self.delegate)
        self.center.requestAuthorizationWithOptions_completionHandler_(
            UN.UNAuthorizationOptionAlert | UN.UNAuthorizationOptionSound, self._authorized)

    def _authorized(self, granted, error) -> None:
        if not granted:
            self.log("notifications are not allowed for this app (System Settings → Notifications)")

    def _added(self, error) -> None:
        if error is not None:
            self.log(f"notification not posted: {error}")

    def __call__(self, title: str, message: str) -> None:
        content = self.UN.UNMutableNotificationContent.alloc().init()
        content.setTitle_(title)
        content.setBody_(message)
        request = self.UN.UNNotificationRequest.requestWithIdentifier_content_trigger_(
            uuid.uuid4().hex, content, None)  # no trigger: deliver now
        self.center.addNotificationRequest_withCompletionHandler_(request, self._added)


def choose_files(title: str) -> list[str]:
    """The image files the user picks in an open panel ([] when cancelled)."""
    from AppKit import NSApplication, NSModalResponseOK, NSOpenPanel

    NSApplication.sharedApplication().activateIgnoringOtherApps_(True)  # a menubar app has no window
    panel = NSOpenPanel.openPanel()
    panel.setTitle_(title)
    panel.setMessage_(title)
    panel.setCanChooseFiles_(True)
    panel.setCanChooseDirectories_(False)
    panel.setAllowsMultipleSelection_(True)
    panel.setAllowedFileTypes_(["jpg", "jpeg", "png", "tif", "tiff", "webp"])  # what exiv2 can write
    if panel.runModal() != NSModalResponseOK:
        return []
    return [str(url.path()) for url in panel.URLs()]
