"""app.capture's platform paths with stand-in tools, so the macOS and Wayland code
runs here too. (The X11 clipboard is tested for real under Xvfb in test_cli.py.)"""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from app import capture

PNG = b"\x89PNG\r\n\x1a\nfake"


def fake_tool(folder: Path, name: str, script: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@pytest.fixture
def mac(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(capture, "_appkit", lambda: None)  # no pyobjc: the osascript/pbcopy path


def completed(stdout: bytes = b"", returncode: int = 0, stderr: bytes = b""):
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


def test_mac_osascript_clipboard(mac, monkeypatch):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return completed("«data PNGf{}»\n".format(PNG.hex().upper()).encode())
    monkeypatch.setattr(capture, "_run", run)
    assert capture.clipboard_image_bytes() == PNG
    assert calls[0] == ["osascript", "-e", "the clipboard as «class PNGf»"]


def test_mac_osascript_without_an_image(mac, monkeypatch):
    monkeypatch.setattr(capture, "_run", lambda cmd, **kw: completed(
        returncode=1, stderr="execution error: Can’t make some data into the expected type. (-1700)".encode()))
    with pytest.raises(capture.NoImageOnClipboard):
        capture.clipboard_image_bytes()


class FakeData(bytes):
    def length(self):
        return len(self)


class FakePasteboard:
    def __init__(self, items: dict):
        self.items = dict(items)

    def stringForType_(self, kind):
        return self.items.get(kind)

    def dataForType_(self, kind):
        return FakeData(self.items[kind]) if kind in self.items else None

    def clearContents(self):
        self.items.clear()

    def setString_forType_(self, text, kind):
        self.items[kind] = text
        return True


def fake_appkit(board: FakePasteboard):
    url = types.SimpleNamespace(URLWithString_=lambda s: types.SimpleNamespace(path=lambda: s[len("file://"):]))
    return types.SimpleNamespace(NSPasteboard=types.SimpleNamespace(generalPasteboard=lambda: board),
                                 NSPasteboardTypePNG="public.png", NSPasteboardTypeTIFF="public.tiff",
                                 NSPasteboardTypeString="public.utf8-plain-text", NSURL=url)


def test_mac_pasteboard_png_tiff_file_and_text(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    board = FakePasteboard({"public.tiff": b"II*\0tiff"})
    monkeypatch.setattr(capture, "_appkit", lambda: fake_appkit(board))
    assert capture.clipboard_image_bytes() == b"II*\0tiff"
    board.items["public.png"] = PNG
    assert capture.clipboard_image_bytes() == PNG  # PNG preferred
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8jpeg")
    board.items["public.file-url"] = f"file://{photo}"
    assert capture.clipboard_image_bytes() == b"\xff\xd8jpeg"  # a copied file, not its icon
    capture.copy_text("un café")
    assert board.items == {"public.utf8-plain-text": "un café"}
    with pytest.raises(capture.NoImageOnClipboard):
        capture.clipboard_image_bytes()


def test_mac_screencapture(mac, monkeypatch, tmp_path):
    log = tmp_path / "args"
    ok = fake_tool(tmp_path, "ok", f'echo "$@" > {log}\nfor a; do last=$a; done\nprintf PNGDATA > "$last"\n')
    monkeypatch.setattr(capture, "SCREENCAPTURE", str(ok))
    assert capture.grab_screen() == b"PNGDATA"
    assert log.read_text().split()[:-1] == ["-x"]
    assert capture.grab_screen(region=True) == b"PNGDATA"
    assert log.read_text().split()[:-1] == ["-i", "-x"]

    cancel = fake_tool(tmp_path, "cancel", "exit 1\n")  # Esc during a region drag: no file
    monkeypatch.setattr(capture, "SCREENCAPTURE", str(cancel))
    with pytest.raises(capture.CaptureError, match="cancelled"):
        capture.grab_screen(region=True)
    denied = fake_tool(tmp_path, "denied", "echo 'could not create image from display' >&2\nexit 1\n")
    monkeypatch.setattr(capture, "SCREENCAPTURE", str(denied))
    with pytest.raises(capture.CaptureError, match="Screen Recording"):
        capture.grab_screen()


def test_wayland_clipboard(monkeypatch, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux path")
    types_file = tmp_path / "types"
    fake_tool(tmp_path, "wl-paste", f'if [ "$1" = --list-types ]; then cat {types_file}; exit 0; fi\n'
                                    'printf PNGBYTES\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-9")
    types_file.write_text("text/plain;charset=utf-8\nimage/jpeg\nimage/png\n")
    assert capture.clipboard_image_bytes() == b"PNGBYTES"
    types_file.write_text("text/plain\nUTF8_STRING\n")
    with pytest.raises(capture.NoImageOnClipboard, match="holds text"):
        capture.clipboard_image_bytes()


def test_x11_screen_with_imagemagick(monkeypatch, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux path")
    fake_tool(tmp_path, "import", 'for a; do last=$a; done\nprintf SHOT > "$last"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert capture.grab_screen() == b"SHOT"


def test_missing_tools_say_what_to_install(monkeypatch, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux path")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(capture.CaptureError, match="install xclip"):
        capture.clipboard_image_bytes()
    with pytest.raises(capture.CaptureError, match="ImageMagick"):
        capture.grab_screen()
    with pytest.raises(capture.CaptureError, match="xclip"):
        capture.copy_text("hi")
