"""The rumps layer against a fake rumps that enforces AppKit's and rumps' real rules.

Checked in jaredks/rumps (rumps/rumps.py, 0.4.0):
- Menu.add → __setitem__(_choose_key, item) → key = item.title; the NSMenuItem is added to the
  NSMenu every time, while the ListDict (an OrderedDict) keeps the *first* item's position and
  the *last* item's value: two same-titled items both show, one is unreachable by title.
- MenuItem.clear() calls self._menu.removeAllItems(); _menu is None until the item has had a
  submenu, so clear() on a plain item raises AttributeError.
- App.title requires a str or None (_internal.require_string_or_none).
- Timer.start adds its NSTimer in NSDefaultRunLoopMode only: it does not fire while a modal
  dialog runs (Window.run → NSAlert.runModal) or a menu is open.
- Window.run returns Response(clicked, text), clicked 1 for OK.
- quit_application → NSApplication.terminate_: applicationWillTerminate (events.before_quit)
  and then the process exits; code after App.run() never runs.
AppKit: UI objects only on the main thread (modelled: any touch elsewhere raises).
PyObjCTools.AppHelper.callAfter → performSelectorOnMainThread (common modes: runs in modals).
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
import time
import types

import pytest

from captioning.captioner import Captioner
from menubar import BUNDLE_ID


class Terminated(BaseException):
    """NSApplication terminate: the process exits (nothing after App.run runs)."""


def on_main(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{what} touched off the main thread (AppKit would crash)")


class World:
    """The Mac around the app: main-thread queue (callAfter), timers, dialogs, notifications."""

    def __init__(self):
        self.main_queue: queue.Queue = queue.Queue()  # callAfter: common modes
        self.timers: list = []
        self.modal = False
        self.active = False
        self.posted: list[tuple[str, str]] = []
        self.before_quit: list = []
        self.dialog_answers: list[str] = []
        self.during_modal: list = []  # a hook run repeatedly while a dialog is open
        self.activities: list[str] = []
        self.exited: list[int] = []

    def run_main_queue(self) -> None:
        while True:
            try:
                fn, args = self.main_queue.get_nowait()
            except queue.Empty:
                return
            fn(*args)

    def spin(self, until, timeout: float = 60.0) -> None:
        """The main run loop in the default mode: callAfter items and timers."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            self.run_main_queue()
            for timer in list(self.timers):
                if timer.running:
                    timer.callback(timer)
            time.sleep(0.005)


def fake_rumps(world: World) -> types.ModuleType:
    m = types.ModuleType("rumps")

    class MenuItem:
        def __init__(self, title, callback=None):
            on_main("MenuItem()")
            self._title, self.callback, self._state = str(title), callback, 0
            self._items: dict = {}  # rumps' ListDict: title → item
            self.native: list = []  # what the NSMenu shows
            self._menu = None  # no submenu until something is added
            self._separators = 0

        title = property(lambda self: self._title)

        @title.setter
        def title(self, value):
            on_main("MenuItem.title")
            self._title = str(value)

        state = property(lambda self: self._state)

        @state.setter
        def state(self, value):
            on_main("MenuItem.state")
            self._state = value

        def add(self, item):
            on_main("MenuItem.add")
            if self._menu is None:
                self._menu = []
            if item is None:
                self._separators += 1
                key, item = f"SeparatorMenuItem_{self._separators}", None
            else:
                item = item if isinstance(item, MenuItem) else MenuItem(item)
                key = item.title
            self.native.append(item)
            self._items[key] = item  # an existing key keeps its place, takes the new value

        def clear(self):
            on_main("MenuItem.clear")
            self._menu.clear()  # AttributeError on an item that never had a submenu, as in rumps
            self._items.clear()
            self.native.clear()

        def items(self):
            return self._items.items()

        def __len__(self):
            return len(self._items)

        def __getitem__(self, key):
            return self._items[key]

        def __contains__(self, key):
            return key in self._items

    class App:
        def __init__(self, name, title=None, quit_button="Quit"):
            self.name, self._title, self._menu = name, title, MenuItem(name)

        title = property(lambda self: self._title)

        @title.setter
        def title(self, value):
            on_main("App.title")
            if value is not None and not isinstance(value, str):
                raise TypeError("title must be a string or None")
            self._title = value

        @property
        def menu(self):
            return self._menu

        @menu.setter
        def menu(self, entries):
            for entry in entries:
                if isinstance(entry, tuple):
                    parent, children = entry
                    self._menu.add(parent)
                    for child in children:
                        parent.add(child)
                else:
                    self._menu.add(entry)

        def run(self):
            on_main("App.run")
            world.active = True  # rumps activates the app in run()
            world.script(self)  # the user's clicks; ends with Quit
            raise AssertionError("the app did not quit")

    class Timer:
        def __init__(self, callback, interval):
            self.callback, self.interval, self.running = callback, interval, False

        def start(self):
            self.running = True
            world.timers.append(self)

    class Window:
        def __init__(self, message="", title="", default_text="", ok=None, cancel=None, dimensions=(320, 160)):
            on_main("Window()")
            self.title, self.message = title, message
            self.front = False
            outer = self
            self._alert = types.SimpleNamespace(window=lambda: outer)  # what bring_to_front raises

        def setLevel_(self, level):
            on_main("NSWindow.setLevel_")

        def makeKeyAndOrderFront_(self, sender):
            on_main("NSWindow.makeKeyAndOrderFront_")
            self.front = True

        def run(self):
            on_main("Window.run")
            if not (world.active and self.front):
                raise AssertionError("the dialog would open behind the front app and miss the typing")
            world.modal = True
            try:  # a modal loop: callAfter items run, timers (default mode) do not
                for hook in world.during_modal:
                    hook()
                world.run_main_queue()
            finally:
                world.modal = False
            return types.SimpleNamespace(clicked=1, text=world.dialog_answers.pop(0))

    def alert(title=None, message="", **kw):
        on_main("rumps.alert")
        world.posted.append(("alert", message))
        return 1

    def notification(title, subtitle, message):
        on_main("rumps.notification")
        world.posted.append((title, message))

    def quit_application(sender=None):
        on_main("rumps.quit_application")
        for fn in world.before_quit:
            fn()
        raise Terminated

    m.App, m.MenuItem, m.Timer, m.Window = App, MenuItem, Timer, Window
    m.alert, m.notification, m.quit_application = alert, notification, quit_application
    m.events = types.SimpleNamespace(before_quit=types.SimpleNamespace(register=world.before_quit.append))
    return m


def fake_macos(world: World, monkeypatch, rumps_app) -> None:
    from menubar import macos

    def bring_to_front(window=None):
        on_main("activateIgnoringOtherApps_")
        world.active = True
        if window is not None:
            window.setLevel_(3)
            window.makeKeyAndOrderFront_(None)

    class ProcessInfo:
        def beginActivityWithOptions_reason_(self, options, reason):
            world.activities.append("begin")
            return object()

        def endActivity_(self, token):
            world.activities.append("end")

    def native():
        return lambda title, message: (on_main("UNUserNotificationCenter post"), world.posted.append((title, message)))

    monkeypatch.setattr(macos, "call_on_main", lambda fn, *args: world.main_queue.put((fn, args)))
    monkeypatch.setattr(macos, "bring_to_front", bring_to_front)
    monkeypatch.setattr(macos, "bundle_identifier", lambda: BUNDLE_ID)
    monkeypatch.setattr(macos, "UserNotifications", native)
    monkeypatch.setattr(macos, "Activity", lambda: macos.__dict__["Activity"].__wrapped__(ProcessInfo(), 1)
                        if hasattr(macos.Activity, "__wrapped__") else RealActivity(ProcessInfo(), 1))
    def exit_now(code):  # os._exit ends the whole process, from whichever thread calls it
        world.exited.append(code)
        world.main_queue.put((lambda: (_ for _ in ()).throw(Terminated()), ()))
        threading.Event().wait() if threading.current_thread() is not threading.main_thread() else None
    monkeypatch.setattr(rumps_app, "_exit_now", exit_now)


from menubar.macos import Activity as RealActivity  # noqa: E402


@pytest.fixture
def mac(monkeypatch, tmp_path):
    world = World()
    monkeypatch.setitem(sys.modules, "rumps", fake_rumps(world))
    monkeypatch.delitem(sys.modules, "menubar.rumps_app", raising=False)
    import menubar

    monkeypatch.delattr(menubar, "rumps_app", raising=False)  # else `from menubar import` reuses the old one
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MLX_VLM_PORT_RUNTIME_DIR", str(run_dir))
    import importlib

    from menubar import sources

    rumps_app = importlib.import_module("menubar.rumps_app")  # bound to this test's fake rumps
    fake_macos(world, monkeypatch, rumps_app)
    png = io.BytesIO()
    __import__("PIL.Image").Image.new("RGB", (40, 30), (200, 30, 30)).save(png, format="PNG")
    monkeypatch.setattr(sources.AppCapture, "clipboard_image", lambda self: png.getvalue())
    from captioning import capture

    world.copied = []
    monkeypatch.setattr(capture, "copy_text", lambda text: (on_main("NSPasteboard"), world.copied.append(text)))
    world.run_dir = run_dir
    return world, rumps_app


def test_ask_while_loading_quit_and_the_rules_hold(mac, tiny_path):
    world, rumps_app = mac
    seen_in_modal = []

    def script(app):
        menu = app.menu
        world.dialog_answers.append("What colour is it?")

        def wait_for_ready():  # the model finishes loading while the dialog is open
            deadline = time.monotonic() + 60
            while app.title != "◉" and time.monotonic() < deadline:
                world.run_main_queue()
                time.sleep(0.005)
            seen_in_modal.append(app.title)
        world.during_modal.append(wait_for_ready)
        menu["Ask About Image…"].callback(None)
        world.during_modal.clear()
        world.spin(lambda: any(t == "Answer" for t, _ in world.posted))
        # rumps quirks the menu code must live with
        *_, separator, last = menu["History"]._items  # rebuilt, not duplicated (rumps keeps counting separators)
        assert separator.startswith("SeparatorMenuItem_") and last == "Clear History"
        menu["Detail"]["Fast"].callback(None)
        assert [k for k, v in menu["Detail"].items() if v.state] == ["Fast"]
        with pytest.raises(AttributeError):
            menu["Copy Last Result"].clear()  # no submenu: real rumps fails the same way
        menu["Quit"].callback(None)
        world.spin(lambda: False, timeout=30)  # Terminated ends it

    world.script = script
    with pytest.raises(Terminated):
        rumps_app.run(str(tiny_path))
    assert seen_in_modal == ["◉"], "events must reach the UI while a dialog is open"
    assert world.exited == [] and not (world.run_dir / "caption.sock").exists()
    assert world.activities[:1] == ["begin"] and world.activities[-1] == "end"


def test_quit_while_a_model_loads_leaves_without_waiting(mac, monkeypatch, tiny_path):
    world, rumps_app = mac
    import functools

    release = threading.Event()

    class Stuck(Captioner):
        def load(self):
            release.wait(30)  # one long MLX call
            return self

        def stream(self, image, job):
            return iter(())

    monkeypatch.setattr(rumps_app, "Worker", functools.partial(rumps_app.Worker, factory=Stuck))
    monkeypatch.setattr(rumps_app, "STOP_SECONDS", 0.2)

    def script(app):
        assert app.title == "◌"
        app.menu["Quit"].callback(None)  # returns at once: the menu does not freeze
        assert app.menu["Starting…"].title == "Quitting…"
        world.spin(lambda: False, timeout=30)

    world.script = script
    try:
        with pytest.raises(Terminated):
            rumps_app.run(str(tiny_path))
    finally:
        release.set()
    assert world.exited == [0]  # the hard exit, before NSApplication's exit() could abort in MLX


def test_the_fake_enforces_the_main_thread(mac):
    world, _ = mac
    import rumps

    item = rumps.MenuItem("x")
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, setattr, item, "title", "y")))
    t.start()
    t.join()
    assert errors and item.title == "x"
    menu = rumps.MenuItem("m")
    menu.add(rumps.MenuItem("same"))
    menu.add(rumps.MenuItem("same"))
    assert len(menu) == 1 and len(menu.native) == 2  # both shown, one reachable by title
