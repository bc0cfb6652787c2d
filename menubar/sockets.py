"""Unix-socket plumbing for the service: a private folder, a bounded line reader,
a ping probe (live vs stale socket), the peer's uid, and hang-up detection."""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import struct
from pathlib import Path

from captioning.protocol import decode, encode


class RequestTooLarge(Exception):
    pass


class LineReader:
    """Reads '\\n'-terminated lines from a socket, never buffering more than `limit` bytes."""

    def __init__(self, sock: socket.socket, limit: int, chunk: int = 1 << 16):
        self.sock, self.limit, self.chunk = sock, limit, chunk
        self.buf = bytearray()
        self._scanned = 0  # bytes of buf already known to hold no newline (no quadratic rescans)

    def readline(self) -> bytes | None:
        """The next line without its newline; at EOF the unterminated rest (or None if empty).
        Raises RequestTooLarge past `limit`, socket.timeout / OSError from the socket."""
        while True:
            i = self.buf.find(b"\n", self._scanned)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                self._scanned = 0
                return line
            self._scanned = len(self.buf)
            if len(self.buf) > self.limit:
                raise RequestTooLarge
            data = self.sock.recv(min(self.chunk, self.limit + 1 - len(self.buf)) or 1)
            if not data:
                rest, self.buf = bytes(self.buf), bytearray()
                return rest or None
            self.buf += data

    def discard_line(self) -> None:
        """Drop input up to the end of the current line (or EOF), holding one chunk at most."""
        if b"\n" in self.buf:
            del self.buf[: self.buf.index(b"\n") + 1]
            self._scanned = 0
            return
        self.buf = bytearray()
        self._scanned = 0
        while True:
            data = self.sock.recv(self.chunk)
            if not data:
                return
            if b"\n" in data:
                self.buf = bytearray(data[data.index(b"\n") + 1:])
                return


def private_runtime_dir(path: Path) -> Path:
    """Create the socket's folder 0700 (with a umask, so it is never briefly open) and
    refuse one that another user owns: whoever owns the folder could swap the socket."""
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {st.st_uid})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def probe(path: Path, timeout: float = 2.0) -> tuple[str, dict | None]:
    """("absent" | "stale" | "live" | "mute", pong): is a server answering at `path`?
    "stale": the file is there but nothing listens (a crashed run); "mute": something
    accepted the connection but did not answer the ping in time."""
    if not os.path.lexists(path):
        return "absent", None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return "stale", None
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                return "stale", None
            return "mute", None
        try:
            s.sendall(encode({"op": "ping"}))
            reply = LineReader(s, 1 << 16).readline()
            pong = decode(reply) if reply else None
        except (OSError, ValueError, RequestTooLarge):
            return "mute", None
    return ("live", pong) if pong and pong.get("type") == "pong" else ("mute", None)


def peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's uid where the OS tells (Linux SO_PEERCRED); None elsewhere,
    where the 0700 folder is what keeps other users out."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
        return uid
    except OSError:
        return None


def hung_up(conn: socket.socket) -> bool:
    """True once the peer closed the connection entirely. (A half-close, shutdown(SHUT_WR)
    after sending the request, is not a hang-up: that client still reads the answer.)

    Where kqueue exists (macOS, BSD) the question is whether *our* writes can still be
    delivered: EVFILT_WRITE reports EV_EOF once the peer can no longer receive, and not for
    its half-close. poll() cannot be used there: xnu reports the peer's SHUT_WR as POLLHUP.
    Linux reports POLLHUP only when both directions are shut."""
    if hasattr(select, "kqueue"):
        return _write_side_closed(conn)
    try:
        poller = select.poll()
        poller.register(conn, select.POLLHUP | select.POLLERR)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _write_side_closed(conn: socket.socket) -> bool:
    try:
        kq = select.kqueue()
    except OSError:
        return False
    try:
        change = select.kevent(conn.fileno(), filter=select.KQ_FILTER_WRITE,
                               flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT)
        events = kq.control([change], 1, 0)
        return any(ev.flags & select.KQ_EV_EOF for ev in events)
    except (OSError, ValueError):
        return False
    finally:
        kq.close()
