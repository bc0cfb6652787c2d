"""The local caption service's wire format: JSON lines over a Unix socket.

Request (one line):  {"op": "caption", "id": "...", "image_path" | "image_b64": ...,
                      "prompt": str, "system": str | null, "max_tokens": int,
                      "temperature": float, "min_p": float, "repetition_penalty": float,
                      "detail": "Fast" | "Balanced" | "Detailed" | null,
                      "max_image_tokens": int | null (LFM2-VL), "longest_edge": int | null (SmolVLM),
                      "do_image_splitting": bool | null}
                 or  {"op": "ping"}
Replies (lines):     {"id", "type": "piece", "text"} ... then
                     {"id", "type": "done", "text", "model", "prompt_tokens",
                      "generation_tokens", "seconds"}
                 or  {"id", "type": "error", "code": <CLI exit code>, "message"}
                 or  {"type": "pong", "model", "pid"}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a base64 screenshot fits with room to spare


def runtime_dir() -> Path:
    """A per-user folder for the socket (created 0700 by the server)."""
    if os.environ.get("MLX_VLM_PORT_RUNTIME_DIR"):
        return Path(os.environ["MLX_VLM_PORT_RUNTIME_DIR"])
    if sys.platform == "darwin":
        # The per-user temp folder (/var/folders/…/T/) from confstr(_CS_DARWIN_USER_TEMP_DIR = 65537):
        # the same for every process of the user, whereas $TMPDIR is missing under launchd
        # agents and some Shortcuts runs (tempfile would then pick /tmp, and nobody would meet).
        try:
            folder = os.confstr(65537)
        except (OSError, ValueError):
            folder = None
        if folder:
            return Path(folder) / f"mlx-vlm-port-{os.getuid()}"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mlx-vlm-port"
    return Path(tempfile.gettempdir()) / f"mlx-vlm-port-{os.getuid()}"


def socket_path() -> Path:
    return runtime_dir() / "caption.sock"


def encode(message: dict) -> bytes:
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()


def decode(line: bytes) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message
