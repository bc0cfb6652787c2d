"""The app's logic, free of rumps: menu actions → jobs → results, history, settings, state.

Every method here runs on the UI thread (menu callbacks and the timer's `tick`).
The worker and the screen-capture thread never call the UI: they put events on
`self.events`, which `tick` drains, so titles and menus change only on the UI thread.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from captioning.job import DEFAULT_PROMPT, DETECT_PROMPT
from menubar.history import History, menu_label
from menubar.jobs import Request
from menubar.launchagent import LaunchAgent
from menubar.settings import DETAILS, LANGUAGES, MODELS, Settings, in_language
from menubar.sources import AppCapture, Capture
from menubar.storage import data_dir
from menubar.worker import Worker

if TYPE_CHECKING:
    from menubar.api_server import ApiServer

TITLES = {"idle": "◌", "loading": "◌", "ready": "◉", "busy": "◐", "error": "⚠"}
RESULT_TITLES = {"caption": "Caption", "ask": "Answer", "find": "Objects", "metadata": "Written into the photo"}


class UI(Protocol):
    def set_title(self, title: str) -> None: ...
    def notify(self, title: str, message: str) -> None: ...
    def copy(self, text: str) -> None: ...
    def alert(self, title: str, message: str) -> None: ...
    def prompt(self, title: str, message: str, default: str = "") -> str | None: ...
    def open_file(self, path: Path) -> None: ...
    def choose_images(self, title: str) -> list[Path]: ...
    def update_menu(self, state: "MenuState") -> None: ...


@dataclass
class MenuState:
    """What the menu shows: checkmarks, the history entries, what is enabled."""
    model: str
    models: tuple[str, ...]
    detail: str
    language: str
    history: list[str]
    launch_at_login: bool
    copy_results: bool
    has_result: bool
    local_api: bool  # the local API is serving
    state: str
    status: str  # a line for the top of the menu: "Ready — <model>", "Loading …", the error


class App:
    def __init__(self, ui: UI, worker: Worker, *, settings: Settings, history: History,
                 capture: Capture | None = None, launch_agent: LaunchAgent | None = None,
                 detections_dir: Path | None = None, max_waiting: int = 2, api: "ApiServer | None" = None):
        self.ui, self.worker, self.settings, self.history = ui, worker, settings, history
        self.capture = capture or AppCapture()
        self.launch_agent = launch_agent or LaunchAgent()
        self.detections_dir = detections_dir or data_dir() / "detections"
        self.max_waiting = max_waiting  # jobs allowed to wait behind the running one
        self.api = api  # the local API (menubar.api_server.ApiServer), made on first use
        self.events: queue.Queue = queue.Queue()
        self.state, self.state_detail = "idle", ""
        self.active = 0  # our jobs submitted and not yet answered (+1 while a screen grab runs)
        self.capturing = False
        self.last_image: bytes | None = None
        self.last_result: str | None = history[0]["text"] if len(history) else None
        self.photos: list[Path] = []  # chosen photos still to caption into their metadata
        self.writing = False  # one of them is with the worker
        worker.add_listener(lambda state, detail: self.events.put(("state", state, detail)))

    def start(self) -> None:
        """Load the chosen model (in the worker) and draw the first title and menu."""
        self.worker.load(self.settings.model)
        self.state = "loading"
        if self.settings.local_api:
            self._start_api()
        self.render()

    # --- menu actions ---------------------------------------------------------------
    def caption_clipboard(self) -> None:
        image = self._clipboard(quiet=False)
        if image is not None:
            self._submit("caption", image, DEFAULT_PROMPT)

    def caption_screen(self, region: bool) -> None:
        """Grab the screen on a short-lived thread: `screencapture -i` waits for the user's
        selection, and the menubar must stay responsive meanwhile."""
        if self.capturing or self._refuse_if_full():
            return
        self.capturing = True
        self.active += 1
        threading.Thread(target=self._grab, args=(region,), name="screen-grab", daemon=True).start()

    def ask(self) -> None:
        image = self._image_for_question()
        if image is None:
            return
        question = self.ui.prompt("Ask About Image", "Ask a question about the image "
                                  "(the clipboard's if it holds a new one, else the last one):")
        if question and question.strip():
            self._submit("ask", image, question.strip())

    def find_objects(self) -> None:
        image = self._image_for_question()
        if image is None:
            return
        query = self.ui.prompt("Find Objects", "What should be found? (e.g. person, cup, car)")
        if query and query.strip():
            self._submit("find", image, query.strip())

    def write_into_photos(self) -> None:
        """Caption chosen photo files and write title, alt text, description and keywords
        into each (XMP, with IPTC/EXIF mirrors), atomically, as `--write-metadata` does.
        One photo goes to the worker at a time; the rest wait here."""
        self.photos += self.ui.choose_images("Write Caption into Photos")
        if not self.writing:
            self._next_photo()

    def copy_last(self) -> None:
        if self.last_result is None:
            self.ui.notify("Nothing to copy yet", "Caption an image first.")
        else:
            self.ui.copy(self.last_result)

    def copy_history(self, index: int) -> None:
        if 0 <= index < len(self.history):
            self.ui.copy(self.history[index]["text"])

    def clear_history(self) -> None:
        self._guard(self.history.clear)
        self.render()

    def set_detail(self, name: str) -> None:
        if name in DETAILS:
            self.settings.detail = name
            self._save_settings()

    def set_language(self, name: str) -> None:
        if name in LANGUAGES:
            self.settings.language = name
            self._save_settings()

    def set_model(self, model: str) -> None:
        """Load `model` on the worker; the menu stays responsive, and a failed load keeps the old one."""
        if model == self.settings.model and self.state != "error":
            return
        self.settings.model = model
        self._save_settings()
        self.worker.load(model)

    def toggle_copy_results(self) -> None:
        self.settings.copy_results = not self.settings.copy_results
        self._save_settings()

    def toggle_local_api(self) -> None:
        """Serve (or stop serving) the OpenAI-compatible API on the same worker; remembered."""
        if self.api is not None and self.api.running:
            self.api.close()
            self.settings.local_api = False
        else:
            self.settings.local_api = self._start_api()
        self._save_settings()

    def copy_api_key(self) -> None:
        from menubar.api_server import api_key

        try:
            key = api_key(self.api.key_file if self.api is not None else None)
        except OSError as e:
            self.ui.alert("Cannot read the API key", str(e))
            return
        self.ui.copy(key)
        self.ui.notify("API key copied", "Send it as “Authorization: Bearer <key>”.")

    def _start_api(self) -> bool:
        from menubar.api_server import ApiServer, ApiUnavailable

        try:
            if self.api is None:
                self.api = ApiServer(self.worker)
            self.api.start()
        except (ApiUnavailable, OSError) as e:
            self.ui.notify("Local API not started", str(e))
            return False
        self.ui.notify("Local API on", f"{self.api.url} — use Copy API Key for the key.")
        return True

    def stop_api(self) -> None:
        """At quit (any thread): stop serving, leave the setting as it is."""
        if self.api is not None:
            self.api.close()

    def toggle_launch_at_login(self) -> None:
        if self._guard(self.launch_agent.set, not self.launch_agent.enabled()):
            self.render()

    # --- events (drained on the UI thread by the timer) ----------------------------------
    def tick(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                getattr(self, f"_on_{event[0]}")(*event[1:])
            except Exception as e:  # one bad event must not stop the timer
                print(f"menubar: {event[0]} event failed: {type(e).__name__}: {e}", file=sys.stderr)

    def _on_state(self, state: str, detail: str) -> None:
        previous, self.state, self.state_detail = self.state, state, detail
        if state == "error" and previous == "loading":
            self.ui.notify("The model could not be loaded", detail)
        if state == "ready" and previous == "error" and detail != self.settings.model:
            self.settings.model = detail  # a failed switch: the checkmark goes back to the model in use
            self._save_settings()
        self.render()

    def _on_captured(self, image: bytes | None, error: str | None) -> None:
        self.capturing = False
        self.active -= 1
        if error:
            self.ui.notify("Screen capture failed", error)
        elif image is not None:  # None: the user cancelled the selection
            self._submit("caption", image, DEFAULT_PROMPT)
        self.render()

    def _on_job(self, job: Request, message: dict) -> None:
        kind = message["type"]
        if kind == "piece":
            return
        self.active -= 1
        if kind == "error":
            self.ui.notify("Caption failed", message.get("message", "unknown error"))
        else:
            self._result(job.tag, message)
        if job.tag[0] == "metadata":
            self.writing = False
            self._next_photo()
        self.render()

    def _result(self, tag: tuple, message: dict) -> None:
        kind, question, image = tag
        text = message.get("text", "").strip()
        shown = text or "(the model gave no text)"
        if kind == "find":
            from menubar.detections import show_boxes

            shown, path = show_boxes(image, text, self.detections_dir)
            if path is not None:
                self.ui.open_file(path)
        if kind == "metadata":
            from captioning import metadata
            from captioning.errors import Failure

            target, question = question, question.path
            try:
                fields = metadata.write(target, text)
            except Failure as e:
                self.ui.notify("Not written into the photo", e.message)
                return
            text, shown = fields.description, f"{Path(target.path).name}: {fields.alt_text}"
        self.last_result = text
        self._guard(self.history.add, text, kind=kind, prompt=question, model=message.get("model", ""))
        if self.settings.copy_results and text:
            self.ui.copy(text)
        self.ui.notify(RESULT_TITLES[kind], shown)

    # --- helpers ----------------------------------------------------------------------
    def _next_photo(self) -> None:
        """Check the next chosen photo (before any model time) and send it to the worker;
        a photo that cannot be written, or already has a description, is a notification."""
        from captioning import metadata, safe_write
        from captioning.errors import Failure

        while self.photos and not self.writing:
            path = self.photos.pop(0)
            try:
                metadata.require()
                safe_write.remove_stale(str(path.parent))  # temporary files of a killed write
                target = metadata.prepare(str(path), path.name)
                data = path.read_bytes()
            except Failure as e:
                self.ui.notify("Not written into the photo", e.message)
                continue
            except OSError as e:
                self.ui.notify("Not written into the photo", f"{path.name}: cannot read ({e.strerror or e})")
                continue
            if target.described:
                self.ui.notify("Already described", f"{target.label} already has a description; left as it was")
                continue
            job = Request(data, self.settings.job(metadata.prompt(self.settings.language), json_schema=metadata.SCHEMA),
                          tag=("metadata", target, data))
            job.sink = functools.partial(self._post_job, job)
            if not self.worker.submit(job):
                self.ui.notify("Still working", "The caption queue is full; choose the photos again in a moment.")
                self.photos.clear()
                return
            self.active += 1
            self.writing = True
        self.render()

    def _grab(self, region: bool) -> None:  # on the screen-grab thread: events only
        try:
            self.events.put(("captured", self.capture.screen(region), None))
        except Exception as e:
            self.events.put(("captured", None, str(e) or type(e).__name__))

    def _clipboard(self, quiet: bool) -> bytes | None:
        try:
            image = self.capture.clipboard_image()
        except Exception as e:
            image = None
            if not quiet:
                self.ui.notify("Cannot read the clipboard", str(e) or type(e).__name__)
                return None
        if image is None and not quiet:
            self.ui.notify("No image on the clipboard",
                           "Copy an image (⌃⇧⌘4 copies a screen region), then try again.")
        return image

    def _image_for_question(self) -> bytes | None:
        """A new clipboard image if there is one, else the last image (follow-up questions)."""
        image = self._clipboard(quiet=True)
        if image is not None and (self.last_image is None or _digest(image) != _digest(self.last_image)):
            return image
        if self.last_image is not None:
            return self.last_image
        self.ui.notify("No image to ask about", "Copy an image, or caption one first.")
        return None

    def _refuse_if_full(self) -> bool:
        if self.active > self.max_waiting:
            self.ui.notify("Still working", f"{self.active} requests are in progress; try again in a moment.")
            return True
        return False

    def _submit(self, kind: str, image: bytes, question: str) -> None:
        if self._refuse_if_full():
            return
        if kind == "find":  # labels stay as asked: no language suffix; boxes held to their schema
            from captioning.grounding import DETECT_SCHEMA

            job = self.settings.job(DETECT_PROMPT.format(query=question), greedy=True, json_schema=DETECT_SCHEMA)
        else:
            job = self.settings.job(in_language(question, self.settings.language))
        job = Request(image, job, tag=(kind, question, image))
        job.sink = functools.partial(self._post_job, job)
        if not self.worker.submit(job):
            self.ui.notify("Still working", "The caption queue is full; try again in a moment.")
            return
        self.active += 1
        self.last_image = image
        self.render()

    def _post_job(self, job: Request, message: dict) -> None:  # on the worker thread: events only
        self.events.put(("job", job, message))

    def _save_settings(self) -> None:
        self._guard(self.settings.save)
        self.render()

    def _guard(self, fn, *args, **kwargs) -> bool:
        """Run a file operation; a disk error becomes an alert, not a crash."""
        try:
            fn(*args, **kwargs)
            return True
        except OSError as e:
            self.ui.alert("Could not save", f"{e}")
            return False

    def title(self) -> str:
        return TITLES["busy"] if self.active and self.state in ("ready", "busy") else TITLES[self.state]

    def menu_state(self) -> MenuState:
        model = self.settings.model
        status = {"idle": "Starting…", "loading": f"Loading {self.state_detail or model}…",
                  "ready": f"Ready — {self.worker.model_id}", "busy": "Working…",
                  "error": f"Error: {self.state_detail}"}[self.state]
        return MenuState(model=model, models=MODELS if model in MODELS else MODELS + (model,),
                         detail=self.settings.detail, language=self.settings.language,
                         history=[menu_label(e) for e in self.history.entries],
                         launch_at_login=self.launch_agent.enabled(), copy_results=self.settings.copy_results,
                         has_result=self.last_result is not None, state=self.state, status=status,
                         local_api=self.api is not None and self.api.running)

    def render(self) -> None:
        self.ui.set_title(self.title())
        self.ui.update_menu(self.menu_state())


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
