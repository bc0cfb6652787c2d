"""Menu actions beyond plain captions, with the fakes of test_menubar_core: Ask (follow-ups),
Find Objects (a drawn PNG), screen grabs off the UI thread, History, Launch at Login."""

from __future__ import annotations

import stat
import threading

import pytest

from captioning.job import DETECT_PROMPT
from menubar.history import History
from tests.test_menubar_core import png, pump, rig  # noqa: F401  (rig is a fixture)


def test_ask_uses_new_clipboard_image_else_follows_up_on_the_last(rig):
    app, ui, capture, lab, _ = rig
    first, second = png(10), png(11)
    ui.answers = [None]
    app.ask()  # nothing to ask about yet
    assert ui.notes[-1][0] == "No image to ask about"
    capture.clipboard = first
    ui.answers = ["What colour is it?"]
    app.ask()
    pump(app, lambda: ui.notes[-1][0] == "Answer")
    assert lab.calls[-1]["image"] == first and lab.calls[-1]["prompt"] == "What colour is it?"
    capture.clipboard = None  # clipboard emptied: the follow-up is about the same image
    ui.answers = ["And the shape?"]
    app.ask()
    pump(app, lambda: len([n for n in ui.notes if n[0] == "Answer"]) == 2)
    assert lab.calls[-1]["image"] == first
    capture.clipboard = second
    ui.answers = ["Now?"]
    app.ask()
    pump(app, lambda: len([n for n in ui.notes if n[0] == "Answer"]) == 3)
    assert lab.calls[-1]["image"] == second
    n = len(lab.calls)
    ui.answers = ["   "]  # a blank question (or Cancel) asks nothing
    app.ask()
    assert len(lab.calls) == n and app.history[0]["prompt"] == "Now?"


def test_find_objects_draws_boxes_into_a_private_png(rig, tmp_path):
    app, ui, capture, lab, _ = rig
    capture.clipboard = png(12, 200, 100)
    prompt = DETECT_PROMPT.format(query="cup")
    lab.answers[prompt] = '[{"label": "cup", "bbox": [0.1, 0.1, 0.5, 0.6]}, {"label": "cup", "bbox": [0.6, 0.2, 0.9, 0.9]}]'
    ui.answers = ["cup"]
    app.find_objects()
    pump(app, lambda: ui.notes)
    assert lab.calls[-1]["prompt"] == prompt and lab.calls[-1]["temperature"] == 0.0
    from captioning.grounding import DETECT_SCHEMA

    assert lab.calls[-1]["json_schema"] == DETECT_SCHEMA  # the boxes are held to their schema
    assert ui.notes[-1] == ("Objects", "Found 2: cup ×2")
    (path,) = ui.opened
    assert path.parent == tmp_path / "data" / "detections" and path.suffix == ".png"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    from PIL import Image

    assert Image.open(path).size == (200, 100)
    lab.answers[DETECT_PROMPT.format(query="dog")] = "I see no dog."
    ui.answers = ["dog"]
    app.find_objects()
    pump(app, lambda: len(ui.notes) == 2)
    assert ui.notes[-1] == ("Objects", "No objects found.") and len(ui.opened) == 1


def test_screen_capture_runs_off_the_ui_thread(rig, monkeypatch):
    """Through the real capture adapter (menubar.sources.AppCapture) over captioning.capture,
    whose grab is replaced by one that records its thread and acts out each outcome."""
    from captioning import capture as capture_module
    from menubar.sources import AppCapture

    app, ui, _, lab, _ = rig
    app.capture = AppCapture()
    grabs, outcomes = [], []

    def grab_screen(region=False):
        grabs.append((threading.current_thread() is threading.main_thread(), region))
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(capture_module, "grab_screen", grab_screen)
    outcomes.append(capture_module.CaptureCancelled("no region was selected (cancelled)"))
    app.caption_screen(region=True)  # the user pressed Esc: no job, no message
    pump(app, lambda: not app.capturing)
    assert ui.notes == [] and app.active == 0
    outcomes.append(capture_module.CaptureError("allow Screen Recording for MLX Caption"))
    app.caption_screen(region=False)
    pump(app, lambda: ui.notes)
    assert ui.notes[-1] == ("Screen capture failed", "allow Screen Recording for MLX Caption")
    outcomes.append(png(13))
    app.caption_screen(region=True)
    pump(app, lambda: len(ui.notes) == 2)
    assert ui.notes[-1][0] == "Caption" and lab.calls[-1]["image"] == png(13)
    assert grabs == [(False, True), (False, False), (False, True)]  # never on the UI (main) thread


def test_the_clipboard_adapter_tells_no_image_from_a_broken_clipboard(monkeypatch):
    from captioning import capture as capture_module
    from menubar.sources import AppCapture

    def reading(outcome):
        def clipboard_image_bytes():
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return clipboard_image_bytes

    monkeypatch.setattr(capture_module, "clipboard_image_bytes", reading(png(3)))
    assert AppCapture().clipboard_image() == png(3)
    monkeypatch.setattr(capture_module, "clipboard_image_bytes",
                        reading(capture_module.NoImageOnClipboard("the clipboard has no image")))
    assert AppCapture().clipboard_image() is None
    monkeypatch.setattr(capture_module, "clipboard_image_bytes",
                        reading(capture_module.CaptureError("xclip is not installed")))
    with pytest.raises(capture_module.CaptureError, match="xclip"):
        AppCapture().clipboard_image()


def test_history_menu_copy_and_clear(rig, tmp_path):
    app, ui, capture, lab, _ = rig
    for seed in (14, 15):
        capture.clipboard = png(seed)
        app.caption_clipboard()
        pump(app, lambda: app.active == 0)
    assert len(ui.menus[-1].history) == 2 and ui.menus[-1].has_result
    app.copy_history(1)
    assert ui.copied[-1] == app.history[1]["text"]
    app.clear_history()
    assert ui.menus[-1].history == [] and History(tmp_path / "data" / "history.json").entries == []


def test_launch_at_login_toggles_the_agent(rig, tmp_path):
    import plistlib

    app, ui, *_ = rig
    plist = tmp_path / "LaunchAgents" / "x.plist"
    app.toggle_launch_at_login()
    assert ui.menus[-1].launch_at_login and plistlib.loads(plist.read_bytes())["RunAtLoad"] is True
    app.toggle_launch_at_login()
    assert not plist.exists() and not ui.menus[-1].launch_at_login


def test_a_save_error_is_an_alert_not_a_crash(rig, tmp_path):
    app, ui, *_ = rig
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder should be")
    app.settings.path = blocker / "settings.json"
    app.set_detail("Fast")
    assert ui.alerts and ui.alerts[-1][0] == "Could not save"
    assert app.settings.detail == "Fast"  # still applied for this session
