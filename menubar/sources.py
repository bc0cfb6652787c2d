"""Where images come from: the capture helpers (captioning/capture.py), imported on first
use so the menubar's logic imports (and its tests run) without them."""

from __future__ import annotations

import io
import os
from typing import Protocol


class Capture(Protocol):
    def clipboard_image(self) -> bytes | None: ...

    def screen(self, region: bool) -> bytes | None: ...


class AppCapture:
    """captioning.capture's helpers; each returns encoded image bytes, or None for "no image"
    (an empty clipboard, a cancelled region), and raises CaptureError for real failures."""

    def clipboard_image(self) -> bytes | None:
        from captioning import capture

        try:
            return as_bytes(capture.clipboard_image_bytes())
        except capture.NoImageOnClipboard:
            return None

    def screen(self, region: bool) -> bytes | None:
        from captioning import capture

        try:
            return as_bytes(capture.grab_screen(region=region))
        except capture.CaptureCancelled:  # Esc during the selection: not an error
            return None


def as_bytes(value) -> bytes | None:
    """Encoded image bytes from whatever a helper returned: bytes, a file path or a PIL image."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read() or None
    if hasattr(value, "save"):  # a PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"cannot use a {type(value).__name__} as an image")
