"""The thin rumps layer (macOS only): menu items call the App controller, its events are
delivered on the main thread, and RumpsUI is the UI protocol in AppKit terms.

All logic lives in menubar/core.py; nothing here decides anything. Every event the
worker or a capture thread queues also schedules `core.tick` on the main run loop
(menubar.macos.call_on_main), which runs in every run-loop mode: events arrive while
the menu is open or a dialog runs, where a rumps.Timer (default mode only) stalls.
The timer stays as a slow safety net.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import rumps

from menubar import APP_NAME, macos
from menubar.launchagent import LaunchAgent
from menubar.core import TITLES, App, MenuState
from menubar.history import History
from menubar.notify import Notifier
from menubar.service import AlreadyRunning, Service
from menubar.settings import DETAILS, LANGUAGES, Settings
from menubar.worker import Worker

TICK_SECONDS = 1.0  # the safety net; events normally arrive through call_on_main
STOP_SECONDS = 5.0  # how long Quit waits for the worker before leaving without it


class WakingQueue(queue.Queue):
    """The controller's event queue: each put also asks the main thread to drain it."""

    def __init__(self, wake):
        super().__init__()
        self.wake = wake

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        try:
            self.wake()
        except Exception as e:  # the timer still drains it
            print(f"menubar: cannot wake the main thread ({type(e).__name__}: {e})", file=sys.stderr)


def _exit_now(code: int) -> None:
    os._exit(code)


class RumpsUI:
    def __init__(self, app: "rumps.App", notifier: Notifier):
        self.app, self.notifier = app, notifier
        self.menu: MenuView | None = None

    def set_title(self, title: str) -> None:
        if self.app.title != title:
            self.app.title = title

    def notify(self, title: str, message: str) -> None:
        self.notifier(title, message)

    def copy(self, text: str) -> None:
        try:
            from AppKit import NSPasteboard, NSPasteboardTypeString  # pyobjc comes with rumps

            board = NSPasteboard.generalPasteboard()
            board.clearContents()
            board.setString_forType_(text, NSPasteboardTypeString)
        except Exception:
            from captioning.capture import copy_text

            copy_text(text)

    def alert(self, title: str, message: str) -> None:
        _front(None)  # rumps.alert builds its NSAlert inside: at least activate the app
        rumps.alert(title=title, message=message)

    def prompt(self, title: str, message: str, default: str = "") -> str | None:
        window = rumps.Window(message=message, title=title, default_text=default, ok="OK", cancel="Cancel",
                              dimensions=(320, 60))
        alert = getattr(window, "_alert", None)  # rumps.Window's NSAlert
        _front(alert.window() if alert is not None else None)
        response = window.run()
        return response.text if response.clicked else None

    def open_file(self, path: Path) -> None:
        subprocess.Popen(["/usr/bin/open", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def choose_images(self, title: str) -> list[Path]:
        return [Path(p) for p in macos.choose_files(title)]

    def update_menu(self, state: MenuState) -> None:
        if self.menu is not None:
            self.menu.apply(state)


def _front(window) -> None:
    try:
        macos.bring_to_front(window)
    except Exception as e:  # the dialog still runs, if perhaps behind
        print(f"menubar: cannot bring the dialog to the front ({type(e).__name__}: {e})", file=sys.stderr)


class MenuView:
    """The rumps menu; `apply` sets checkmarks and rebuilds History/Model only when they changed."""

    def __init__(self, app: "rumps.App", core: App, on_quit):
        def item(title, action):
            return rumps.MenuItem(title, callback=lambda _sender: action())

        self.core = core
        self.status = rumps.MenuItem("Starting…")  # no callback: shown greyed out
        self.copy_last = item("Copy Last Result", core.copy_last)
        self.history = rumps.MenuItem("History")
        self.details = {n: item(n, lambda n=n: core.set_detail(n)) for n in DETAILS}
        self.languages = {n: item(n, lambda n=n: core.set_language(n)) for n in LANGUAGES}
        self.model = rumps.MenuItem("Model")
        self.copy_results = item("Copy Results to Clipboard", core.toggle_copy_results)
        self.launch = item("Launch at Login", core.toggle_launch_at_login)
        self.local_api = item("Local API", core.toggle_local_api)
        self._shown_history: list[str] | None = None
        self._shown_models: tuple | None = None
        app.menu = [
            self.status, None,
            item("Caption Clipboard Image", core.caption_clipboard),
            item("Caption Screen Region…", lambda: core.caption_screen(True)),
            item("Caption Whole Screen", lambda: core.caption_screen(False)),
            item("Ask About Image…", core.ask),
            item("Find Objects…", core.find_objects),
            item("Write Caption into Photos…", core.write_into_photos),
            None,
            self.copy_last, self.history, None,
            (rumps.MenuItem("Detail"), list(self.details.values())),
            (rumps.MenuItem("Language"), list(self.languages.values())),
            self.model, None,
            self.copy_results, self.launch, None,
            self.local_api, item("Copy API Key", core.copy_api_key), None,
            item("Quit", on_quit),
        ]

    def apply(self, state: MenuState) -> None:
        self.status.title = state.status
        for name, entry in self.details.items():
            entry.state = int(name == state.detail)
        for name, entry in self.languages.items():
            entry.state = int(name == state.language)
        self.copy_results.state = int(state.copy_results)
        self.launch.state = int(state.launch_at_login)
        self.local_api.state = int(state.local_api)
        if state.models != self._shown_models:
            self._rebuild(self.model, [(m, lambda m=m: self.core.set_model(m)) for m in state.models])
            self._shown_models = state.models
        for title, entry in self.model.items():
            entry.state = int(title == state.model)
        if state.history != self._shown_history:
            # Numbered titles: rumps keys items by title, so two equal captions would collapse.
            entries = [(f"{i + 1}. {label}", lambda i=i: self.core.copy_history(i))
                       for i, label in enumerate(state.history)]
            self._rebuild(self.history, entries or [("(empty)", None)], tail=("Clear History", self.core.clear_history))
            self._shown_history = list(state.history)

    @staticmethod
    def _rebuild(parent, entries, tail=None) -> None:
        if len(parent):
            parent.clear()
        for title, action in entries:
            parent.add(rumps.MenuItem(title, callback=(lambda _s, a=action: a()) if action else None))
        if tail:
            parent.add(None)
            parent.add(rumps.MenuItem(tail[0], callback=lambda _s: tail[1]()))


def build(model: str | None = None):
    """Wire settings, worker, service, controller and menu; returns (rumps app, controller, shutdown)."""
    settings = Settings.load()
    if model:
        settings.model = model
    worker = Worker(settings.model)
    service: Service | None = Service(worker)
    problem = None
    try:
        service.bind()
    except (AlreadyRunning, OSError) as e:  # the menu still works; the CLI uses the other server
        service, problem = None, str(e)
    app = rumps.App(APP_NAME, title=TITLES["loading"], quit_button=None)
    notifier = Notifier(rumps, bundle_id=macos.bundle_identifier(), native=macos.UserNotifications)
    ui = RumpsUI(app, notifier)
    agent = LaunchAgent()
    try:
        agent.refresh()  # the app may have moved since Launch at Login was turned on
    except OSError as e:
        print(f"menubar: cannot update {agent.path}: {e}", file=sys.stderr)
    core = App(ui, worker, settings=settings, history=History(), launch_agent=agent)
    core.events = WakingQueue(lambda: macos.call_on_main(core.tick))
    try:
        worker.add_listener(macos.Activity().on_worker_state)  # no App Nap while loading or captioning
    except Exception as e:
        print(f"menubar: no activity assertion ({type(e).__name__}: {e})", file=sys.stderr)
    done, stopped = [], threading.Event()

    def shutdown(timeout: float | None = None) -> None:
        """Stop the service and the worker; leave at once if the worker is stuck in MLX (a
        model load), since an MLX thread alive at exit aborts the process."""
        timeout = STOP_SECONDS if timeout is None else timeout
        if not done:
            done.append(True)
            core.stop_api()
            if service:
                service.close()
            worker.stop(timeout=timeout)
            stopped.set()
        else:
            stopped.wait(timeout)
        if worker.alive:
            print("menubar: the worker is still busy; exiting without waiting", file=sys.stderr, flush=True)
            _exit_now(0)

    def quit_app() -> None:
        """Quit without freezing the menu: stop on a helper thread, then terminate on the main
        thread. NSApplication terminate: exits right after applicationWillTerminate (rumps'
        before_quit), so nothing placed after app.run() would run."""
        ui.set_title(TITLES["loading"])
        ui.menu.status.title = "Quitting…"

        def stop_then_quit():
            shutdown()
            macos.call_on_main(rumps.quit_application)

        threading.Thread(target=stop_then_quit, name="quit", daemon=True).start()

    ui.menu = MenuView(app, core, quit_app)
    worker.start()
    if service:
        service.start()
    core.start()
    if problem:
        ui.notify("Caption service not started", problem)
    return app, core, shutdown


def run(model: str | None = None) -> int:
    app, core, shutdown = build(model)
    timer = rumps.Timer(lambda _timer: core.tick(), TICK_SECONDS)  # default run-loop mode only
    timer.start()
    rumps.events.before_quit.register(shutdown)  # logout / restart too; the process exits right after
    app.run()
    shutdown()  # only reached if the run loop ever returns instead of exiting
    return 0


if __name__ == "__main__":
    sys.exit(run())
