"""Client of the menubar app's local caption service (wire format: captioning.protocol).

The CLI asks the running service first, because it already holds the model in
memory: a caption then costs no model load. Anything that says "no usable
service" (no socket, a stale socket file, a refusal, a service that accepts but
does not answer a ping) raises ServiceUnavailable, and the CLI falls back to
loading the model itself without a word. An error the service reports about
the job itself raises ServiceError with the CLI exit code it carries.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from pathlib import Path
from typing import Callable

from . import protocol

CONNECT_TIMEOUT = 0.5  # the service is local: a live one answers at once
PING_TIMEOUT = 2.0
REPLY_TIMEOUT = 600.0  # longest silence while a caption is being computed


class ServiceUnavailable(Exception):
    """No usable service: run in-process instead."""


class ServiceError(Exception):
    """The service ran the job and reported an error (code = CLI exit code)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _connect(path: Path, timeout: float) -> socket.socket:
    if not hasattr(socket, "AF_UNIX"):
        raise ServiceUnavailable("no Unix sockets on this platform")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as e:  # ENOENT, ECONNREFUSED (stale file), EACCES, timeout, path too long
        sock.close()
        raise ServiceUnavailable(f"{path}: {e}") from None
    return sock


def _exchange(request: dict, path: Path | None, connect_timeout: float, reply_timeout: float):
    """Send one request line; yield the reply messages as they arrive."""
    sock = _connect(path or protocol.socket_path(), connect_timeout)
    with sock, sock.makefile("rb") as lines:
        try:
            sock.sendall(protocol.encode(request))
            sock.settimeout(reply_timeout)
            for line in lines:
                if line.strip():
                    yield protocol.decode(line)
        except (OSError, ValueError) as e:  # reset, timeout, garbage from an unrelated listener
            raise ServiceUnavailable(f"service connection failed: {type(e).__name__}: {e}") from None


def ping(path: Path | None = None, timeout: float = PING_TIMEOUT) -> dict:
    """The service's pong ({"type": "pong", "model", "pid"}); ServiceUnavailable otherwise."""
    for message in _exchange({"op": "ping"}, path, CONNECT_TIMEOUT, timeout):
        if message.get("type") == "pong":
            return message
    raise ServiceUnavailable("the service did not answer the ping")


def same_model(requested: str, served: str | None) -> bool:
    """Whether the service's model is the one asked for (hub ids by name, folders by real path)."""
    if not served:
        return False
    if requested == served:
        return True
    a, b = Path(requested).expanduser(), Path(served).expanduser()
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def image_fields(data: bytes | None = None, path: str | os.PathLike | None = None) -> dict:
    """How to pass an image: its bytes, base64-encoded. Sending bytes (not a path)
    matters on macOS, where the menubar app may lack the Files & Folders
    permission that Terminal has for ~/Desktop or ~/Documents. A file too big for
    one request line goes by path."""
    if data is None:
        size = os.path.getsize(path)
        if size * 4 // 3 + 4096 > protocol.MAX_REQUEST_BYTES:
            return {"image_path": os.path.abspath(path)}
        data = Path(path).read_bytes()
    return {"image_b64": base64.b64encode(data).decode("ascii")}


def caption(request: dict, on_piece: Callable[[str], None] | None = None, *, path: Path | None = None,
            connect_timeout: float = CONNECT_TIMEOUT, reply_timeout: float = REPLY_TIMEOUT) -> dict:
    """Run one caption job on the service; streamed pieces go to on_piece.

    `request` holds the protocol's caption fields (op and id are filled in).
    Returns the "done" message. Raises ServiceUnavailable when the service is
    gone before anything was streamed (the caller may redo the job locally),
    ServiceError for a reported error or a connection lost mid-answer."""
    job = {**request, "op": "caption", "id": request.get("id") or uuid.uuid4().hex}
    streamed = False
    try:
        for message in _exchange(job, path, connect_timeout, reply_timeout):
            if message.get("id") not in (None, job["id"]):
                continue
            kind = message.get("type")
            if kind == "piece":
                streamed = True
                if on_piece:
                    on_piece(str(message.get("text", "")))
            elif kind == "done":
                return message
            elif kind == "error":
                code = message.get("code")
                raise ServiceError(code if isinstance(code, int) and 0 < code < 126 else 1,
                                   str(message.get("message") or "the caption service reported an error"))
    except ServiceUnavailable:
        if streamed:
            raise ServiceError(1, "the caption service stopped in the middle of an answer") from None
        raise
    if streamed:
        raise ServiceError(1, "the caption service closed the connection before finishing")
    raise ServiceUnavailable("the service closed the connection without an answer")
