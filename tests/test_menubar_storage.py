"""The menubar's files and system hooks: storage permissions, history, settings, the
notification fallback (rumps raising → osascript), Launch at Login."""

from __future__ import annotations

import json
import os
import plistlib
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from menubar import BUNDLE_ID
from menubar.history import CAP, History, menu_label
from menubar.launchagent import LaunchAgent
from menubar.notify import OSASCRIPT, Notifier, applescript_quote
from menubar.settings import DETAILS, LANGUAGES, MODELS, Settings, in_language
from menubar.storage import data_dir

ROOT = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- storage, history, settings -------------------------------------------------------------
def test_data_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "mlx-caption"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / ".local" / "share" / "mlx-caption"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert data_dir() == tmp_path / "Library" / "Application Support" / "MLX Caption"


def test_history_caps_at_20_persists_privately_and_clears(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)  # an older, looser folder gets tightened
    h = History(folder / "history.json")
    for i in range(CAP + 5):
        h.add(f"caption {i}", kind="caption", prompt="Describe this image.", model="m")
    assert len(h) == CAP and h[0]["text"] == f"caption {CAP + 4}" and h[-1]["text"] == "caption 5"
    assert mode(folder) == 0o700 and mode(folder / "history.json") == 0o600
    again = History(folder / "history.json")
    assert [e["text"] for e in again.entries] == [e["text"] for e in h.entries]
    again.clear()
    assert History(folder / "history.json").entries == []
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_history_survives_a_corrupt_file(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("{not json")
    assert History(path).entries == []
    path.write_text(json.dumps([{"text": "ok"}, {"nope": 1}, "junk"]))
    assert [e["text"] for e in History(path).entries] == ["ok"]
    assert menu_label({"text": "a\n  b " + "x" * 100}).startswith("a b x") and len(menu_label({"text": "x" * 100})) == 48


def test_settings_defaults_validation_and_round_trip(tmp_path):
    path = tmp_path / "s" / "settings.json"
    s = Settings.load(path)
    assert (s.detail, s.language, s.copy_results) == ("Balanced", "English", True)
    s.model, s.detail, s.language = MODELS[4], "Fast", "Japanese"
    s.save()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert Settings.load(path).as_dict() == s.as_dict()
    path.write_text(json.dumps({"model": 3, "detail": "Ultra", "language": "Klingon", "copy_results": "yes",
                                "max_tokens": True}))
    bad = Settings.load(path)
    assert (bad.detail, bad.language, bad.copy_results, bad.max_tokens) == ("Balanced", "English", True, 256)
    assert DETAILS["Fast"]["lfm2_vl"].given() == {"max_image_tokens": 64, "do_image_splitting": False}
    assert DETAILS["Detailed"]["lfm2_vl"].given() == {"max_image_tokens": 256, "do_image_splitting": True}
    assert all(set(d) == {"lfm2_vl", "idefics3"} for d in DETAILS.values())  # every preset, for every family
    assert len(LANGUAGES) == 9 and len(MODELS) == 7
    assert sum(m.startswith("LiquidAI/LFM2.5-VL-450M-MLX-") for m in MODELS) == 5
    assert sum(m.startswith("HuggingFaceTB/SmolVLM-") for m in MODELS) == 2
    assert in_language("Describe this image.", "English") == "Describe this image."
    assert in_language("Describe this image.", "Korean") == "Describe this image. Answer in Korean."


# --- Launch at Login ----------------------------------------------------------------------------
def test_launch_agent_plist(tmp_path):
    agent = LaunchAgent(tmp_path / "LaunchAgents" / f"{BUNDLE_ID}.plist")
    assert not agent.enabled()
    agent.set(True)
    data = plistlib.loads(agent.path.read_bytes())
    assert data["Label"] == BUNDLE_ID and data["RunAtLoad"] is True
    assert data["ProgramArguments"] == [sys.executable, "-m", "menubar"]
    assert data["WorkingDirectory"] == str(ROOT) and mode(agent.path) == 0o644
    # What launchd would run, run from where it would run it (asking only for the usage line):
    # the app must start from there, installed or not.
    started = subprocess.run([*data["ProgramArguments"], "--help"], cwd=data["WorkingDirectory"],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert started.returncode == 0 and started.stdout.startswith("usage: python -m menubar"), started.stderr
    agent.set(False)
    assert not agent.enabled()
    agent.disable()  # twice is fine
