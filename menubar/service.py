"""The local caption service: JSON lines over a Unix socket (captioning/protocol.py), no TCP.

Connection handler threads parse and validate requests, decode the image, then
only enqueue a job to the worker and forward the replies it streams into the
job's own queue. The worker is never blocked by a slow or vanished client.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

from captioning.errors import Exit, Failure
from captioning.protocol import MAX_REQUEST_BYTES, decode, encode, socket_path
from menubar.jobs import request_from_message
from menubar.sockets import LineReader, RequestTooLarge, hung_up, peer_uid, private_runtime_dir, probe
from menubar.worker import Worker


class AlreadyRunning(RuntimeError):
    """Another live server owns the socket."""


def _stderr(line: str) -> None:
    print(f"menubar: {line}", file=sys.stderr, flush=True)


class Service:
    def __init__(self, worker: Worker, path: Path | None = None, *, max_connections: int = 64,
                 idle_timeout: float = 60.0, max_request: int = MAX_REQUEST_BYTES,
                 log: Callable[[str], None] = _stderr):
        self.worker = worker
        self.path = Path(path) if path else socket_path()
        self.max_connections, self.idle_timeout, self.max_request = max_connections, idle_timeout, max_request
        self._log = log
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------
    def bind(self) -> None:
        """Take the socket: replace a stale one, refuse (AlreadyRunning) if a server answers."""
        private_runtime_dir(self.path.parent)
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # the socket file is born 0600, never briefly wider
            try:
                sock.bind(str(self.path))
            except OSError as e:
                sock.close()
                if not os.path.lexists(self.path):
                    raise  # not a clash: e.g. the path is too long for AF_UNIX
                status, pong = probe(self.path)
                if status == "live":
                    raise AlreadyRunning(f"a caption service is already running (pid {pong.get('pid')}, "
                                         f"model {pong.get('model')}) at {self.path}") from None
                if status == "mute":
                    raise AlreadyRunning(f"something is listening at {self.path} but does not answer; "
                                         "stop it or remove the file") from None
                self._log(f"replacing a stale socket at {self.path} ({e.strerror})")
                os.unlink(self.path)  # nothing listens: left by a crashed run
                continue
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(64)
            sock.settimeout(0.25)  # so the accept loop notices close()
            self._sock, self._inode = sock, os.stat(self.path).st_ino
            return
        raise AlreadyRunning(f"could not take {self.path}: another server keeps binding it")

    def start(self) -> "Service":
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self._accept_loop, name="caption-service", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, wake the handlers, remove the socket file if it is still ours."""
        self._closing.set()
        if self._thread:
            self._thread.join(2)
        if self._sock:
            self._sock.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if not self._closing.is_set():
                    self._log(f"accept failed: {e}")
                    self._closing.wait(0.1)
                continue
            threading.Thread(target=self._handle, args=(conn,), name="caption-conn", daemon=True).start()

    # --- one connection -----------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.idle_timeout)  # a client that says nothing does not pin a thread
            with self._lock:
                crowded = len(self._conns) >= self.max_connections
                if not crowded:
                    self._conns.add(conn)
            try:
                if crowded:
                    self._send(conn, {"type": "error", "code": Exit.MODEL, "message": "too many connections; try again"})
                    return
                uid = peer_uid(conn)
                if uid is not None and uid != os.getuid():
                    self._log(f"refused a connection from uid {uid}")
                    self._send(conn, {"type": "error", "code": Exit.USAGE, "message": "refused: another user"})
                    return
                self._serve(conn)
            except OSError:
                pass  # the client went away or timed out; nothing to answer
            finally:
                with self._lock:
                    self._conns.discard(conn)

    def _serve(self, conn: socket.socket) -> None:
        reader = LineReader(conn, self.max_request)
        while not self._closing.is_set():
            try:
                line = reader.readline()
            except RequestTooLarge:
                self._log(f"refused a request over {self.max_request} bytes")
                self._send(conn, {"type": "error", "code": Exit.USAGE,
                                  "message": f"request larger than {self.max_request} bytes"})
                reader.discard_line()  # let the client finish sending, then hang up
                return
            if line is None:
                return
            if not line.strip():
                continue
            try:
                request = decode(line)
            except ValueError as e:
                self._send(conn, {"type": "error", "code": Exit.USAGE, "message": f"malformed request: {e}"})
                continue
            op = request.get("op")
            if op == "ping":
                self._send(conn, {"type": "pong", "model": self.worker.model_id, "pid": os.getpid(),
                                  "state": self.worker.state, "queued": self.worker.queued})
            elif op == "caption":
                if not self._caption(conn, request):
                    return
            else:
                self._send(conn, {"id": request.get("id"), "type": "error", "code": Exit.USAGE,
                                  "message": f"unknown op {op!r} (use 'caption' or 'ping')"})

    def _caption(self, conn: socket.socket, request: dict) -> bool:
        """Run one caption request; False when the connection is no longer usable."""
        try:
            job = request_from_message(request)
        except Failure as e:
            self._send(conn, {"id": request.get("id"), "type": "error", "code": e.code, "message": e.message})
            return True
        replies: queue.Queue = queue.Queue()  # unbounded: pieces are bounded by max_tokens
        job.sink = replies.put
        if not self.worker.submit(job):
            self._send(conn, {"id": job.id, "type": "error", "code": Exit.MODEL,
                              "message": f"busy: {self.worker.queued} jobs are waiting; try again"})
            return True
        while True:
            try:
                message = replies.get(timeout=0.25)
            except queue.Empty:
                if self._closing.is_set() or hung_up(conn):
                    self._log(f"job {job.id}: client gone, abandoned")
                    job.cancelled.set()  # the worker skips or stops it
                    return False
                continue
            try:
                self._send(conn, message)
            except OSError:
                self._log(f"job {job.id}: client gone, abandoned")
                job.cancelled.set()
                return False
            if message["type"] == "done":
                self._log(f"job {job.id}: done, {message['generation_tokens']} tokens in {message['seconds']:.2f}s")
                return True
            if message["type"] == "error":
                self._log(f"job {job.id}: error {message['code']}: {message['message']}")
                return True

    @staticmethod
    def _send(conn: socket.socket, message: dict) -> None:
        conn.sendall(encode(message))
