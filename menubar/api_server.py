"""Running the local API (menubar/api.py) on uvicorn in a thread of its own, next to the
Unix-socket service and on the same worker; and the API key it requires.

Loopback only unless `public` is given. uvicorn bounds header size (h11) and idle
keep-alive; it has no deadline for a request's headers, so the protocol below adds one:
a client that trickles its headers is cut off instead of holding a connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

from menubar.storage import FILE_MODE, data_dir, private_dir
from menubar.worker import Worker

DEFAULT_BIND = "127.0.0.1:8089"
HEADER_TIMEOUT = 10.0  # seconds from connecting (or from the last answer) to a request's complete headers
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this


class ApiUnavailable(RuntimeError):
    """The API cannot start: uvicorn missing, a refused or busy address. One line for the user."""


def _stderr(line: str) -> None:
    print(f"menubar: {line}", file=sys.stderr, flush=True)


def key_path() -> Path:
    return data_dir() / "api-key"


def api_key(path: Path | None = None) -> str:
    """The API key, made on first use: random, 0600 in the app's 0700 data folder."""
    path = path or key_path()
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            if path.stat().st_mode & 0o077:  # loosened since (a copy, an editor): private again
                os.chmod(path, FILE_MODE)
            return key
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    key = f"sk-local-{secrets.token_urlsafe(32)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), FILE_MODE)  # an older file keeps its mode on O_TRUNC
        f.write(key + "\n")
    return key


def parse_bind(text: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT", "PORT" or "[v6]:PORT" → (IP literal, port); ValueError says why not."""
    host, sep, port = text.rpartition(":") if ":" in text else ("", ":", text)
    host = host.strip("[]") or "127.0.0.1"
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: give an IP address (like 127.0.0.1), not a name") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def _protocol():
    """uvicorn's h11 protocol with a deadline on each request's headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if getattr(self, "_deadline", None) is not None and self.conn.their_state is not h11.IDLE:
                self._deadline.cancel()  # the headers are in: the body has its own deadline (menubar/api.py)
                self._deadline = None

        def connection_lost(self, exc) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(self.config.header_timeout, self._expire)

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # headers still unfinished
                self.transport.close()

    return HeaderDeadline


class ApiServer:
    def __init__(self, worker: Worker, bind: str = DEFAULT_BIND, *, public: bool = False,
                 origins: tuple[str, ...] = (), key_file: Path | None = None,
                 header_timeout: float = HEADER_TIMEOUT, log: Callable[[str], None] = _stderr):
        self.worker, self.bind_text, self.public, self.origins = worker, bind, public, tuple(origins)
        self.key_file, self.header_timeout, self._log = key_file or key_path(), header_timeout, log
        self.host, self.port = parse_bind(bind)
        self.key: str | None = None
        self._sock: socket.socket | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def bind(self) -> None:
        """Check the address and take it; ApiUnavailable says why not."""
        if not ipaddress.ip_address(self.host).is_loopback and not self.public:
            raise ApiUnavailable(f"refusing to serve the API on {self.bind_text}, which is not a loopback address: "
                                 "other machines could reach it; pass --http-public to mean it (the API key "
                                 "is still required)")
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            raise ApiUnavailable("the local API needs uvicorn: pip install '.[api]'") from None
        try:
            self.key = api_key(self.key_file)
        except OSError as e:
            raise ApiUnavailable(f"cannot keep the API key at {self.key_file}: {e}") from None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets; without it each
        # answer waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise ApiUnavailable(f"cannot serve the API on {self.bind_text}: {e.strerror or e}") from None
        self._sock, self.port = sock, sock.getsockname()[1]

    def start(self) -> "ApiServer":
        import uvicorn

        from menubar.api import Api, allowed_hosts

        if self._sock is None:
            self.bind()
        app = Api(self.worker, self.key, allowed_hosts(self.host, self.port), origins=self.origins,
                  log=self._log)
        config = uvicorn.Config(app, http=_protocol(), ws="none", lifespan="off", log_config=None,
                                log_level="warning", access_log=False, server_header=False,
                                timeout_keep_alive=5, limit_concurrency=MAX_CONNECTIONS,
                                h11_max_incomplete_event_size=16 * 1024, timeout_graceful_shutdown=2)
        config.header_timeout = self.header_timeout
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="caption-api", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except Exception as e:
            self._log(f"the local API stopped: {type(e).__name__}: {e}")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._sock = self._server = self._thread = None
