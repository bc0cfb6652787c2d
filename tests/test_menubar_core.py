"""The menubar's logic (menubar/core.py + worker.py) with a fake UI, fake capture and a
fake model: menu actions → jobs → results, settings, history, busy queueing, errors."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass

import pytest

from captioning.captioner import Captioner
from captioning.job import DEFAULT_PROMPT
from menubar.core import TITLES, App
from menubar.history import History
from menubar.launchagent import LaunchAgent
from menubar.settings import MODELS, Settings
from menubar.worker import Worker
from tests.images import synthetic_image


def png(seed: int, w: int = 48, h: int = 32) -> bytes:
    buf = io.BytesIO()
    synthetic_image(w, h, seed).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class FakeResponse:
    text: str
    prompt_tokens: int = 10
    generation_tokens: int = 1
    prompt_seconds: float = 0.01
    finish_reason: str | None = None


class FakeModel(Captioner):
    """The real Captioner with the model replaced: records which thread does what and
    what each job asked, can be held mid-generation."""

    def __init__(self, model: str, lab: "Lab"):
        super().__init__(model)
        self.lab = lab

    def load(self):
        self.lab.threads.add(threading.get_ident())
        if "bad" in self.model_id:
            raise RuntimeError(f"{self.model_id}: no such checkpoint")
        self.lab.loaded.append(self.model_id)
        return self

    def stream(self, image, job):
        lab = self.lab
        lab.threads.add(threading.get_ident())
        with lab.lock:
            lab.running += 1
            lab.max_running = max(lab.max_running, lab.running)
        try:
            question = job.prompt
            lab.calls.append({"image": image, "prompt": question, "system": job.system, "detail": job.detail,
                              "json_schema": job.json_schema, **job.sampling.given(), **job.image.given()})
            if job.sampling.max_tokens != 1:  # the warm-up is never held
                lab.gate.wait(10)
            if image == b"not an image":
                from mlx_vlm_port.image import ImageError

                raise ImageError("image data is not a readable image")
            answer = lab.answers.get(question, f"caption of {len(image) if isinstance(image, bytes) else 'img'}")
            yield FakeResponse(answer[: len(answer) // 2])
            yield FakeResponse(answer[len(answer) // 2:], generation_tokens=2, finish_reason="stop")
        finally:
            with lab.lock:
                lab.running -= 1

    def stream_batch(self, images, jobs, batch_size=None):  # jobs that waited together: the same, in turn
        for index, (image, job) in enumerate(zip(images, jobs)):
            for response in self.stream(image, job):
                yield index, response


class Lab:
    def __init__(self):
        self.threads, self.loaded, self.calls = set(), [], []
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.running = self.max_running = 0
        self.answers: dict[str, str] = {}


class FakeUI:
    def __init__(self):
        self.titles, self.notes, self.copied, self.alerts, self.opened, self.menus = [], [], [], [], [], []
        self.answers: list[str | None] = []
        self.chosen: list = []  # what the next file chooser returns
        self.thread = threading.get_ident()

    def _on_ui_thread(self):
        assert threading.get_ident() == self.thread, "UI touched off the UI thread"

    def set_title(self, title):
        self._on_ui_thread()
        self.titles.append(title)

    def notify(self, title, message):
        self._on_ui_thread()
        self.notes.append((title, message))

    def copy(self, text):
        self.copied.append(text)

    def alert(self, title, message):
        self.alerts.append((title, message))

    def prompt(self, title, message, default=""):
        return self.answers.pop(0) if self.answers else None

    def open_file(self, path):
        self.opened.append(path)

    def choose_images(self, title):
        self._on_ui_thread()
        chosen, self.chosen = self.chosen, []
        return chosen

    def update_menu(self, state):
        self._on_ui_thread()
        self.menus.append(state)


class FakeCapture:
    def __init__(self):
        self.clipboard: bytes | None = None
        self.screen_result: bytes | None = None
        self.screen_error: Exception | None = None

    def clipboard_image(self):
        return self.clipboard

    def screen(self, region):
        if self.screen_error:
            raise self.screen_error
        return self.screen_result


@pytest.fixture
def rig(tmp_path):
    lab, ui, capture = Lab(), FakeUI(), FakeCapture()
    worker = Worker("model-a", factory=lambda m: FakeModel(m, lab), log=lambda line: None).start()
    settings = Settings.load(tmp_path / "data" / "settings.json")
    settings.model = "model-a"
    app = App(ui, worker, settings=settings, history=History(tmp_path / "data" / "history.json"),
              capture=capture, launch_agent=LaunchAgent(tmp_path / "LaunchAgents" / "x.plist", ["/bin/true"]),
              detections_dir=tmp_path / "data" / "detections")
    app.start()
    pump(app, lambda: app.state == "ready")
    yield app, ui, capture, lab, worker
    lab.gate.set()
    worker.stop()


def pump(app: App, done, timeout: float = 5.0) -> None:
    """Run the UI timer until `done()`; what rumps.Timer does on the Mac."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.tick()
        if done():
            return
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the app")


def test_start_loads_and_warms_up_on_the_worker_thread(rig):
    app, ui, _, lab, worker = rig
    assert lab.loaded == ["model-a"]
    assert lab.calls[0]["max_tokens"] == 1  # the one-token warm-up
    assert ui.titles[0] == TITLES["loading"] and ui.titles[-1] == TITLES["ready"]
    assert ui.menus[-1].status.startswith("Ready")
    assert lab.threads == {worker._thread.ident}


def test_caption_clipboard_copies_notifies_and_records(rig):
    app, ui, capture, lab, _ = rig
    capture.clipboard = png(1)
    app.caption_clipboard()
    pump(app, lambda: ui.notes)
    text = f"caption of {len(capture.clipboard)}"
    assert ui.notes == [("Caption", text)]
    assert ui.copied == [text]
    assert app.history[0]["text"] == text and app.history[0]["kind"] == "caption"
    assert app.last_result == text and app.active == 0
    call = lab.calls[-1]
    assert call["prompt"] == DEFAULT_PROMPT
    assert call["detail"] == "Balanced"  # the Captioner resolves it for the loaded family
    app.copy_last()
    assert ui.copied[-1] == text


def test_empty_clipboard_is_a_message_not_a_job(rig):
    app, ui, capture, lab, _ = rig
    n = len(lab.calls)
    app.caption_clipboard()
    assert ui.notes[-1][0] == "No image on the clipboard"
    assert app.active == 0 and len(lab.calls) == n


def test_detail_language_and_copy_settings_apply_and_persist(rig, tmp_path):
    app, ui, capture, lab, _ = rig
    app.set_detail("Fast")
    app.set_language("French")
    app.toggle_copy_results()
    capture.clipboard = png(2)
    app.caption_clipboard()
    pump(app, lambda: ui.notes)
    call = lab.calls[-1]
    assert call["detail"] == "Fast"
    assert call["prompt"] == f"{DEFAULT_PROMPT} Answer in French."
    assert ui.copied == []  # copying was turned off
    app.set_detail("Detailed")
    app.set_detail("Nonsense")  # ignored
    saved = json.loads((tmp_path / "data" / "settings.json").read_text())
    assert (saved["detail"], saved["language"], saved["copy_results"]) == ("Detailed", "French", False)
    again = Settings.load(tmp_path / "data" / "settings.json")
    job = again.job("Hi")
    assert (job.prompt, job.detail, job.sampling.max_tokens, job.sampling.temperature) == ("Hi", "Detailed", 256, 0.1)
    assert ui.menus[-1].detail == "Detailed" and ui.menus[-1].language == "French"


def test_model_switch_loads_in_background_and_a_failed_one_falls_back(rig):
    app, ui, capture, lab, worker = rig
    app.set_model(MODELS[0])
    pump(app, lambda: app.state == "ready" and worker.model_id == MODELS[0])
    assert lab.loaded[-1] == MODELS[0] and ui.menus[-1].model == MODELS[0]
    app.set_model("bad-model")
    pump(app, lambda: ui.notes)
    assert ui.notes[-1][0] == "The model could not be loaded" and "bad-model" in ui.notes[-1][1]
    pump(app, lambda: app.state == "ready")
    assert app.settings.model == MODELS[0] == worker.model_id  # the checkmark went back
    assert TITLES["error"] in ui.titles
    capture.clipboard = png(3)
    app.caption_clipboard()  # the old model still answers
    pump(app, lambda: len(ui.notes) == 2)
    assert ui.notes[-1][0] == "Caption"
    assert lab.threads == {worker._thread.ident}


def test_load_failure_at_start_is_an_error_state(tmp_path):
    lab, ui = Lab(), FakeUI()
    worker = Worker("bad-one", factory=lambda m: FakeModel(m, lab), log=lambda line: None).start()
    try:
        settings = Settings.load(tmp_path / "s.json")
        settings.model = "bad-one"
        app = App(ui, worker, settings=settings, history=History(tmp_path / "h.json"), capture=FakeCapture(),
                  launch_agent=LaunchAgent(tmp_path / "a.plist", ["/bin/true"]))
        app.start()
        pump(app, lambda: app.state == "error")
        assert ui.titles[-1] == TITLES["error"] and "bad-one" in ui.menus[-1].status
        app.capture.clipboard = png(4)
        app.caption_clipboard()
        pump(app, lambda: len(ui.notes) == 2)
        assert ui.notes[-1][0] == "Caption failed" and "model unavailable" in ui.notes[-1][1]
    finally:
        worker.stop()


def test_busy_clicks_queue_bounded_and_never_run_together(rig):
    app, ui, capture, lab, _ = rig
    lab.gate.clear()
    for seed in (5, 6, 7):
        capture.clipboard = png(seed)
        app.caption_clipboard()
    assert app.active == 3 and app.title() == TITLES["busy"]
    capture.clipboard = png(8)
    app.caption_clipboard()  # a fourth: refused with a message
    assert ui.notes[-1][0] == "Still working" and app.active == 3
    lab.gate.set()
    pump(app, lambda: app.active == 0)
    assert [n[0] for n in ui.notes if n[0] == "Caption"] == ["Caption"] * 3
    assert lab.max_running == 1
    assert [e["text"] for e in app.history.entries[:3]] == [f"caption of {len(png(s))}" for s in (7, 6, 5)]
    pump(app, lambda: ui.titles[-1] == TITLES["ready"])


def test_job_error_is_notified_and_the_app_goes_on(rig):
    app, ui, capture, lab, _ = rig
    capture.clipboard = b"not an image"
    app.caption_clipboard()
    pump(app, lambda: ui.notes)
    assert ui.notes[-1][0] == "Caption failed" and "not a readable image" in ui.notes[-1][1]
    assert app.state == "ready" and len(app.history) == 0
    capture.clipboard = png(9)
    app.caption_clipboard()
    pump(app, lambda: len(ui.notes) == 2)
    assert ui.notes[-1][0] == "Caption"
