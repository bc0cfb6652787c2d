"""The last results, newest first, in a private JSON file (clearable)."""

from __future__ import annotations

import time
from pathlib import Path

from menubar.storage import data_dir, read_json, write_private_json

CAP = 20


def history_path() -> Path:
    return data_dir() / "history.json"


class History:
    """At most `cap` entries {"time", "kind", "prompt", "text", "model"}, newest first."""

    def __init__(self, path: Path | None = None, cap: int = CAP):
        self.path = path or history_path()
        self.cap = cap
        raw = read_json(self.path, [])
        self.entries: list[dict] = [e for e in raw if isinstance(e, dict) and isinstance(e.get("text"), str)][:cap] \
            if isinstance(raw, list) else []

    def add(self, text: str, *, kind: str = "caption", prompt: str = "", model: str = "") -> dict:
        entry = {"time": time.time(), "kind": kind, "prompt": prompt, "text": text, "model": model}
        self.entries = [entry] + self.entries[: self.cap - 1]
        self.save()
        return entry

    def clear(self) -> None:
        self.entries = []
        self.save()

    def save(self) -> None:
        write_private_json(self.path, self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        return self.entries[i]


def menu_label(entry: dict, width: int = 48) -> str:
    """One line for the History submenu."""
    text = " ".join(entry.get("text", "").split()) or "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"
