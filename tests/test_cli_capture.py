"""captioning.capture's platform paths with stand-in tools, so the macOS and Wayland code
runs here too. (The X11 clipboard is tested for real under Xvfb in test_cli.py.)"""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from captioning import capture

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
    monkeypatch.setattr(capture, "screen_access", lambda request=False: True)


def completed(stdout: bytes = b"", returncode: int = 0, stderr: bytes = b""):
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


def test_mac_osascript_clipboard(mac, monkeypatch):
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw.get("env")))
        return completed("«data PNGf{}»\n".format(PNG.hex().upper()).encode())
    monkeypatch.setattr(capture, "_run", run)
    assert capture.clipboard_image_bytes() == PNG
    # The script holds «»: osascript reads it as UTF-8 only under a UTF-8 locale, which
    # Shortcuts' scripts do not have.
    assert calls[0] == (["osascript", "-e", "the clipboard as «class PNGf»"], capture.UTF8_ENV)


def test_mac_osascript_falls_back_to_tiff(mac, monkeypatch):
    """osascript answers per class: a clipboard holding only TIFF (e.g. copied from Preview)
    refuses «class PNGf» with error -1700 and gives «data TIFF…» for «class TIFF»."""
    tiff = b"II*\x00fake tiff"
    asked = []

    def run(cmd, **kw):
        asked.append(cmd[-1])
        if "«class TIFF»" in cmd[-1]:
            return completed("«data TIFF{}»\n".format(tiff.hex().upper()).encode())
        return completed(returncode=1, stderr="execution error: Can’t make some data into the expected "
                                              "type. (-1700)".encode())
    monkeypatch.setattr(capture, "_run", run)
    assert capture.clipboard_image_bytes() == tiff
    assert asked == ["the clipboard as «class PNGf»", "the clipboard as «class TIFF»"]


def test_mac_osascript_without_an_image(mac, monkeypatch):
    monkeypatch.setattr(capture, "_run", lambda cmd, **kw: completed(
        returncode=1, stderr="execution error: Can’t make some data into the expected type. (-1700)".encode()))
    with pytest.raises(capture.NoImageOnClipboard):
        capture.clipboard_image_bytes()


class FakeData(bytes):
    def length(self):
        return len(self)


class FakeURL:
    def __init__(self, path):
        self._path = str(path)

    def path(self):
        return self._path


# What conforms to public.image, as UTType says for these (PDF and video do not).
CONFORMS = {".png": "public.image", ".jpg": "public.image", ".heic": "public.image", ".pdf": "com.adobe.pdf",
            ".mov": "public.movie"}
FILE_URLS_ONLY, CONFORM_TO = "NSPasteboardURLReadingFileURLsOnlyKey", "NSPasteboardURLReadingContentsConformToTypesKey"


class FakePasteboard:
    """NSPasteboard as AppKit documents it: typed data, and file URLs read as NSURL objects,
    filtered by the options (file URLs only; contents conforming to the given UTIs)."""

    def __init__(self, items: dict, files: list | None = None):
        self.items, self.files = dict(items), list(files or [])

    def stringForType_(self, kind):
        return self.items.get(kind)

    def dataForType_(self, kind):
        return FakeData(self.items[kind]) if kind in self.items else None

    def availableTypeFromArray_(self, kinds):
        return next((k for k in kinds if k in self.items), None)

    def _urls(self, classes, options):
        assert classes == [FakeURL] and options.get(FILE_URLS_ONLY) is True
        wanted = options.get(CONFORM_TO)
        return [FakeURL(f) for f in self.files
                if wanted is None or CONFORMS.get(Path(f).suffix.lower()) in wanted]

    def readObjectsForClasses_options_(self, classes, options):
        return self._urls(classes, options) or None  # nil when nothing matches

    def canReadObjectForClasses_options_(self, classes, options):
        return bool(self._urls(classes, options))

    def clearContents(self):
        self.items.clear()
        self.files.clear()

    def setString_forType_(self, text, kind):
        self.items[kind] = text
        return True


def fake_appkit(board: FakePasteboard):
    return types.SimpleNamespace(NSPasteboard=types.SimpleNamespace(generalPasteboard=lambda: board),
                                 NSPasteboardTypePNG="public.png", NSPasteboardTypeTIFF="public.tiff",
                                 NSPasteboardTypeString="public.utf8-plain-text", NSURL=FakeURL,
                                 NSPasteboardURLReadingFileURLsOnlyKey=FILE_URLS_ONLY,
                                 NSPasteboardURLReadingContentsConformToTypesKey=CONFORM_TO)


def test_mac_pasteboard_png_tiff_file_and_text(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    board = FakePasteboard({"public.tiff": b"II*\0tiff"})
    monkeypatch.setattr(capture, "_appkit", lambda: fake_appkit(board))
    assert capture.clipboard_image_bytes() == b"II*\0tiff"
    board.items["public.png"] = PNG
    assert capture.clipboard_image_bytes() == PNG  # PNG preferred
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8jpeg")
    board.files.append(str(photo))  # Finder: the file, plus its icon as TIFF
    assert capture.clipboard_image_bytes() == b"\xff\xd8jpeg"  # the copied file, not its icon
    capture.copy_text("un café")
    assert board.items == {"public.utf8-plain-text": "un café"} and not board.files
    with pytest.raises(capture.NoImageOnClipboard):
        capture.clipboard_image_bytes()


@pytest.mark.parametrize("name", ["report.pdf", "clip.mov"])
def test_a_copied_file_that_is_not_an_image_is_never_read(monkeypatch, tmp_path, name):
    monkeypatch.setattr(sys, "platform", "darwin")
    other = tmp_path / name
    other.write_bytes(b"%PDF-1.7 or a video, possibly gigabytes")
    board = FakePasteboard({"public.tiff": b"II*\0the file's icon"}, files=[str(other)])
    monkeypatch.setattr(capture, "_appkit", lambda: fake_appkit(board))
    read = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or real_read(self))
    with pytest.raises(capture.NoImageOnClipboard, match="not an image"):
        capture.clipboard_image_bytes()  # neither the file nor its icon
    assert read == []


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


@pytest.fixture
def no_permission(mac, monkeypatch, tmp_path):
    """macOS without Screen Recording permission: screencapture exits 0 with a picture of the
    wallpaper and menu bar only, so only the preflight can tell."""
    log = tmp_path / "ran"
    wallpaper = fake_tool(tmp_path, "screencapture",
                          f'touch {log}\nfor a; do last=$a; done\nprintf WALLPAPER > "$last"\nexit 0\n')
    monkeypatch.setattr(capture, "SCREENCAPTURE", str(wallpaper))
    asked = []
    monkeypatch.setattr(capture, "screen_access", lambda request=False: asked.append(request) or False)
    return log, asked


def test_screen_capture_without_permission_is_refused_not_the_wallpaper(no_permission):
    log, asked = no_permission
    for region in (False, True):
        with pytest.raises(capture.CaptureError, match="no Screen Recording permission") as e:
            capture.grab_screen(region=region)
        assert "Privacy & Security" in str(e.value)
    assert asked == [True, True] and not log.exists()  # asked (prompting once), never captured


def test_cli_screen_without_permission_exits_5_with_the_message(no_permission, capsys):
    from app.caption import main

    log, _ = no_permission
    assert main(["--screen"]) == 5
    out, err = capsys.readouterr()
    assert out == "" and "Screen Recording" in err and "WALLPAPER" not in err and not log.exists()


class FakeCoreGraphics:
    """CGPreflightScreenCaptureAccess / CGRequestScreenCaptureAccess, as ctypes sees them."""

    def __init__(self, granted: bool):
        self.granted, self.requests = granted, 0
        outer = self

        class Fn:
            def __init__(self, body):
                self.body, self.restype, self.argtypes = body, None, None

            def __call__(self, *args):
                assert self.restype is __import__("ctypes").c_bool and self.argtypes == [] and not args
                return self.body()

        def request():
            outer.requests += 1
            return outer.granted
        self.CGPreflightScreenCaptureAccess = Fn(lambda: outer.granted)
        self.CGRequestScreenCaptureAccess = Fn(request)


def test_screen_access_preflights_and_requests_only_when_asked(monkeypatch):
    import ctypes

    for granted in (True, False):
        cg = FakeCoreGraphics(granted)
        monkeypatch.setattr(ctypes, "CDLL", lambda path, *a, **k: cg if path == capture.CORE_GRAPHICS else None)
        assert capture.screen_access() is granted and cg.requests == 0
        assert capture.screen_access(request=True) is granted and cg.requests == (0 if granted else 1)
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("no such framework")))
    assert capture.screen_access(request=True) is None  # not a Mac: cannot tell, do not refuse


WL_PASTE = """\
# wl-paste as wl-clipboard's src/wl-paste.c behaves: --list-types prints the offered types;
# an empty clipboard is "Nothing is copied" (exit 1); a type not offered fails (exit 1).
[ -e {broken} ] && {{ echo "Failed to connect to a Wayland server" >&2; exit 1; }}
[ -s {types} ] || {{ echo "Nothing is copied" >&2; exit 1; }}
if [ "$1" = --list-types ]; then cat {types}; exit 0; fi
for a; do last=$a; done
grep -qx "$last" {types} || {{ echo "Clipboard content is not available as requested type \"$last\"" >&2; exit 1; }}
printf "BYTES of %s" "$last"
"""


def test_wayland_clipboard(monkeypatch, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux path")
    types_file, broken = tmp_path / "types", tmp_path / "broken"
    fake_tool(tmp_path, "wl-paste", WL_PASTE.format(types=types_file, broken=broken))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-9")
    types_file.write_text("text/plain;charset=utf-8\nimage/jpeg\nimage/png\n")
    assert capture.clipboard_image_bytes() == b"BYTES of image/png"  # the preferred type, asked by name
    types_file.write_text("image/webp\n")
    assert capture.clipboard_image_bytes() == b"BYTES of image/webp"
    types_file.write_text("text/plain\nUTF8_STRING\n")
    with pytest.raises(capture.NoImageOnClipboard, match="holds text"):
        capture.clipboard_image_bytes()
    types_file.write_text("")
    with pytest.raises(capture.NoImageOnClipboard, match="it is empty"):
        capture.clipboard_image_bytes()
    broken.touch()
    with pytest.raises(capture.CaptureError, match="wl-paste failed: Failed to connect") as e:
        capture.clipboard_image_bytes()
    assert not isinstance(e.value, capture.NoImageOnClipboard)  # exit 5, not 3


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
