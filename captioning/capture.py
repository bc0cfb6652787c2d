"""Clipboard and screen capture for the CLI and the menubar app.

    clipboard_image_bytes() -> bytes     the image on the clipboard (PNG/TIFF/... bytes)
    grab_screen(region=False) -> bytes   the whole screen, or a region the user drags
    copy_text(text)                      put text on the clipboard

Failures raise CaptureError with a one-line message that says what to install
or which permission to grant; an empty or non-image clipboard raises its
subclass NoImageOnClipboard (a missing input, not a broken tool). macOS uses
pyobjc's NSPasteboard when importable and osascript/pbcopy otherwise, and
/usr/sbin/screencapture; Linux uses wl-clipboard/grim on Wayland and
xclip/ImageMagick on X11. Standard library only, so importing this is free.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCREENCAPTURE = "/usr/sbin/screencapture"
SCREEN_PERMISSION = ("allow Screen Recording for the app running this (Terminal, Shortcuts, ...) in "
                     "System Settings → Privacy & Security → Screen & System Audio Recording, then quit and "
                     "reopen that app and retry")
TIMEOUT = 10.0  # seconds for clipboard tools; an unresponsive clipboard owner must not hang us
CORE_GRAPHICS = "/System/Library/Frameworks/CoreGraphics.framework/CoreGraphics"
IMAGE_UTI = "public.image"  # what every image type (PNG, JPEG, HEIC, TIFF, ...) conforms to; PDF and video do not
# Shortcuts runs scripts without a locale; osascript and pbcopy then misread non-ASCII text.
UTF8_ENV = {"LANG": "en_US.UTF-8", "LC_ALL": "en_US.UTF-8"}


class CaptureError(RuntimeError):
    """The clipboard or the screen could not be read (tool missing, permission denied, ...)."""


class NoImageOnClipboard(CaptureError):
    """The clipboard works but holds no image (empty, or text)."""


class CaptureCancelled(CaptureError):
    """The user dismissed the region selection (Esc): nothing to caption, not a failure."""


def clipboard_image_bytes() -> bytes:
    if sys.platform == "darwin":
        return _mac_clipboard_image()
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return _linux_clipboard_image()
    raise CaptureError(f"reading the clipboard is not supported on {sys.platform}")


def grab_screen(region: bool = False) -> bytes:
    if sys.platform == "darwin":
        return _mac_screen(region)
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return _linux_screen(region)
    raise CaptureError(f"screen capture is not supported on {sys.platform}")


def copy_text(text: str) -> None:
    if sys.platform == "darwin":
        return _mac_copy(text)
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return _linux_copy(text)
    raise CaptureError(f"writing the clipboard is not supported on {sys.platform}")


def _run(cmd: list[str], *, data: bytes | None = None, timeout: float | None = TIMEOUT,
         hint: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, input=data, capture_output=True, timeout=timeout,
                              env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise CaptureError(f"{cmd[0]} is not installed{'; ' + hint if hint else ''}") from None
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{Path(cmd[0]).name} did not answer within {timeout:g} s") from None


def _first_line(raw: bytes) -> str:
    lines = raw.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else ""


# --- macOS -------------------------------------------------------------------------------

def _appkit():
    try:
        import AppKit  # pyobjc-framework-Cocoa (the "mac" extra)
    except ImportError:
        return None
    return AppKit


def _mac_clipboard_image() -> bytes:
    appkit = _appkit()
    if appkit is None:
        return _osascript_clipboard_image()
    pb = appkit.NSPasteboard.generalPasteboard()
    # A file copied in Finder also puts its *icon* on the pasteboard as TIFF: caption the
    # file itself, and only when it is an image (a copied PDF or video is not read at all).
    files_only = {appkit.NSPasteboardURLReadingFileURLsOnlyKey: True}
    images = pb.readObjectsForClasses_options_(
        [appkit.NSURL], {**files_only, appkit.NSPasteboardURLReadingContentsConformToTypesKey: [IMAGE_UTI]}) or []
    for url in images:
        path = url.path()
        if path and os.path.isfile(path):
            return Path(path).read_bytes()
    if pb.canReadObjectForClasses_options_([appkit.NSURL], files_only):
        raise NoImageOnClipboard("the clipboard holds a file that is not an image")
    kind = pb.availableTypeFromArray_([appkit.NSPasteboardTypePNG, appkit.NSPasteboardTypeTIFF, "public.jpeg",
                                       "public.heic"])
    data = pb.dataForType_(kind) if kind is not None else None
    if data is not None and data.length() > 0:
        return bytes(data)
    raise NoImageOnClipboard("the clipboard has no image (copy one first, e.g. with ⌃⇧⌘4)")


def _osascript_clipboard_image() -> bytes:
    for cls in ("PNGf", "TIFF"):
        # «» in the script: osascript must read its argument as UTF-8, whatever the caller's locale.
        done = _run(["osascript", "-e", f"the clipboard as «class {cls}»"], env=UTF8_ENV)
        if done.returncode == 0:
            # «data PNGf89504E47...»; the guillemets' encoding depends on the locale, so skip them.
            m = re.search(rb"data [A-Za-z0-9 ]{4}([0-9A-Fa-f]+)", done.stdout)
            if m and len(m.group(1)) % 2 == 0:
                return bytes.fromhex(m.group(1).decode())
    raise NoImageOnClipboard("the clipboard has no image (copy one first, e.g. with ⌃⇧⌘4)")


def _mac_copy(text: str) -> None:
    appkit = _appkit()
    if appkit is not None:
        pb = appkit.NSPasteboard.generalPasteboard()
        pb.clearContents()
        if not pb.setString_forType_(text, appkit.NSPasteboardTypeString):
            raise CaptureError("could not write to the clipboard")
        return
    env = {**os.environ, **UTF8_ENV}
    try:
        done = subprocess.run(["pbcopy"], input=text.encode(), capture_output=True, timeout=TIMEOUT, env=env)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise CaptureError(f"pbcopy failed ({type(e).__name__})") from None
    if done.returncode:
        raise CaptureError(f"pbcopy failed: {_first_line(done.stderr)}")


def screen_access(request: bool = False) -> bool | None:
    """Screen Recording permission of the app this runs under (Terminal, Shortcuts, the
    menubar app): CoreGraphics' CGPreflightScreenCaptureAccess, no prompt. With `request`,
    a missing permission also gets CGRequestScreenCaptureAccess, which asks once (the grant
    counts after the app restarts). None where CoreGraphics cannot tell."""
    try:
        cg = ctypes.CDLL(CORE_GRAPHICS)
        preflight = cg.CGPreflightScreenCaptureAccess
    except (OSError, AttributeError):
        return None
    preflight.restype, preflight.argtypes = ctypes.c_bool, []
    if preflight():
        return True
    if request:
        try:
            ask = cg.CGRequestScreenCaptureAccess
            ask.restype, ask.argtypes = ctypes.c_bool, []
            return bool(ask())
        except AttributeError:
            pass
    return False


def _mac_screen(region: bool) -> bytes:
    if not os.path.exists(SCREENCAPTURE):
        raise CaptureError(f"{SCREENCAPTURE} is missing")
    # Without the permission screencapture still succeeds, with only the wallpaper and menu
    # bar in the picture: check first rather than caption the desktop.
    if screen_access(request=True) is False:
        raise CaptureError(f"no Screen Recording permission: {SCREEN_PERMISSION}")
    with tempfile.TemporaryDirectory(prefix="caption-") as tmp:
        out = Path(tmp) / "screen.png"
        cmd = [SCREENCAPTURE, "-i", "-x", str(out)] if region else [SCREENCAPTURE, "-x", str(out)]
        done = _run(cmd, timeout=None)  # the user may take their time dragging a region
        if out.exists() and out.stat().st_size > 0:
            return out.read_bytes()
        if region and done.returncode in (0, 1) and not done.stderr.strip():
            raise CaptureCancelled("no region was selected (cancelled)")
        why = _first_line(done.stderr) or f"exit status {done.returncode}"
        raise CaptureError(f"screencapture failed ({why}): {SCREEN_PERMISSION}")


# --- Linux and other X11/Wayland systems ---------------------------------------------------

CLIPBOARD_TOOLS = "install xclip (X11: apt install xclip) or wl-clipboard (Wayland)"
PREFERRED_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/gif")


def _session() -> str:
    """'wayland', 'x11', or raise: clipboard and screen need a graphical session."""
    if os.environ.get("WAYLAND_DISPLAY") and shutil.which("wl-paste"):
        return "wayland"
    if os.environ.get("DISPLAY"):
        return "x11"
    if os.environ.get("WAYLAND_DISPLAY"):
        return "wayland"
    raise CaptureError("no graphical session (neither DISPLAY nor WAYLAND_DISPLAY is set)")


def _pick_image_type(types: list[str]) -> str | None:
    images = [t for t in types if t.startswith("image/")]
    return next((t for t in PREFERRED_TYPES if t in images), images[0] if images else None)


def _linux_clipboard_image() -> bytes:
    if _session() == "wayland":
        listed = _run(["wl-paste", "--list-types"], hint=CLIPBOARD_TOOLS)
        if listed.returncode != 0 and "Nothing is copied" not in listed.stderr.decode(errors="replace"):
            # wl-paste's own word for an empty clipboard is "Nothing is copied"; anything else
            # (no Wayland server, no data-control protocol) is a broken tool, not a missing image
            raise CaptureError(f"wl-paste failed: {_first_line(listed.stderr) or f'exit status {listed.returncode}'}")
        types = listed.stdout.decode(errors="replace").split() if listed.returncode == 0 else []
        kind = _pick_image_type(types)
        if kind is None:
            raise NoImageOnClipboard("the clipboard has no image" + (" (it holds text)" if types else " (it is empty)"))
        cmd = ["wl-paste", "--no-newline", "--type", kind]
    else:
        listed = _run(["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"], hint=CLIPBOARD_TOOLS)
        if listed.returncode != 0:
            err = listed.stderr.decode(errors="replace")
            if "display" in err.lower() and "open" in err.lower():
                raise CaptureError(f"xclip cannot open the X display {os.environ.get('DISPLAY')!r}")
            raise NoImageOnClipboard("the clipboard has no image (it is empty)")
        types = listed.stdout.decode(errors="replace").split()
        kind = _pick_image_type(types)
        if kind is None:
            raise NoImageOnClipboard("the clipboard has no image (it holds "
                                     + ("text)" if any("STRING" in t or t.startswith("text/") for t in types)
                                        else "something else)"))
        cmd = ["xclip", "-selection", "clipboard", "-t", kind, "-o"]
    done = _run(cmd, hint=CLIPBOARD_TOOLS)
    if done.returncode != 0 or not done.stdout:
        raise NoImageOnClipboard(f"the clipboard has no image ({cmd[0]}: {_first_line(done.stderr) or 'no data'})")
    return done.stdout


def _linux_copy(text: str) -> None:
    cmd = ["wl-copy"] if _session() == "wayland" else ["xclip", "-selection", "clipboard", "-i"]
    # Both tools fork a process that keeps serving the selection; it inherits
    # our stdout/stderr, so those must not be pipes we wait on.
    try:
        done = subprocess.run(cmd, input=text.encode(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=TIMEOUT)
    except FileNotFoundError:
        raise CaptureError(f"{cmd[0]} is not installed; {CLIPBOARD_TOOLS}") from None
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{cmd[0]} did not answer within {TIMEOUT:g} s") from None
    if done.returncode:
        raise CaptureError(f"{cmd[0]} could not write the clipboard (exit status {done.returncode})")


def _linux_screen(region: bool) -> bytes:
    session = _session()
    with tempfile.TemporaryDirectory(prefix="caption-") as tmp:
        out = str(Path(tmp) / "screen.png")
        if session == "wayland" and shutil.which("grim"):
            geometry: list[str] = []
            if region:
                picked = _run(["slurp"], timeout=None, hint="install slurp to select a region")
                if picked.returncode != 0:
                    raise CaptureCancelled("no region was selected (cancelled)")
                geometry = ["-g", picked.stdout.decode().strip()]
            cmds = [["grim", *geometry, out]]
        else:
            cmds = []
            if shutil.which("gnome-screenshot"):
                cmds.append(["gnome-screenshot", *(["-a"] if region else []), "-f", out])
            if shutil.which("import"):  # ImageMagick: a drag (or click on a window) selects
                cmds.append(["import", *([] if region else ["-window", "root"]), out])
        if not cmds:
            raise CaptureError("screen capture needs grim and slurp (Wayland) or ImageMagick's import (X11)")
        errors = []
        for cmd in cmds:
            done = _run(cmd, timeout=None)
            if os.path.exists(out) and os.path.getsize(out) > 0:
                return Path(out).read_bytes()
            errors.append(f"{cmd[0]}: {_first_line(done.stderr) or f'exit status {done.returncode}'}")
        raise CaptureError("screen capture failed (" + "; ".join(errors) + ")")
