"""Hang-up detection under the macOS kernel's rules, modelled on real Linux sockets.

xnu's poll() turns a read-side EOF into POLLHUP (bsd/kern/sys_generic.c, poll_callback),
so a client that half-closes after its request looks gone; kqueue's EVFILT_WRITE reports
EV_EOF only once our side cannot send any more (filt_sowrite: SS_CANTSENDMORE), i.e. the
peer closed for good. The fake below answers poll and kqueue by those rules, reading the
state of a real socket pair from the Linux kernel (POLLRDHUP: the peer shut its writing
side; POLLHUP: both directions are shut)."""

from __future__ import annotations

import select
import socket
import types

import pytest

from menubar import sockets

pytestmark = pytest.mark.skipif(not hasattr(select, "POLLRDHUP"), reason="models xnu on Linux's poll flags")


def linux_state(sock: socket.socket) -> tuple[bool, bool]:
    """(read side at EOF, write side closed) of a real socket, from the Linux kernel."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP | select.POLLHUP)
    ev = dict(p.poll(0)).get(sock.fileno(), 0)
    return bool(ev & (select.POLLRDHUP | select.POLLHUP)), bool(ev & select.POLLHUP)


def xnu_select() -> types.ModuleType:
    m = types.ModuleType("select")
    m.POLLIN, m.POLLHUP, m.POLLERR = 0x1, 0x10, 0x8
    m.KQ_FILTER_READ, m.KQ_FILTER_WRITE = -1, -2
    m.KQ_EV_ADD, m.KQ_EV_ONESHOT, m.KQ_EV_EOF, m.KQ_EV_ERROR = 0x1, 0x10, 0x8000, 0x4000

    class Poller:
        def __init__(self):
            self.socks = {}

        def register(self, sock, mask):
            self.socks[sock.fileno()] = (sock, mask)

        def poll(self, timeout=None):
            out = []
            for fd, (sock, mask) in self.socks.items():
                read_eof, _ = linux_state(sock)
                if read_eof:  # xnu: EV_EOF on the read filter → POLLHUP, requested or not
                    out.append((fd, m.POLLHUP))
            return out

    class KEvent:
        def __init__(self, ident, filter, flags=0):
            self.ident, self.filter, self.flags = ident, filter, flags

    class KQueue:
        def __init__(self):
            self.closed = False

        def control(self, changes, max_events, timeout=None):
            assert not self.closed and timeout == 0
            out = []
            for change in changes:
                sock = socket.socket(fileno=__import__("os").dup(change.ident))
                try:
                    read_eof, write_closed = linux_state(sock)
                finally:
                    sock.close()
                if change.filter == m.KQ_FILTER_WRITE:
                    # filt_sowrite: writable (room in the buffer), EV_EOF once SS_CANTSENDMORE.
                    out.append(KEvent(change.ident, change.filter, m.KQ_EV_EOF if write_closed else 0))
                elif change.filter == m.KQ_FILTER_READ and read_eof:
                    out.append(KEvent(change.ident, change.filter, m.KQ_EV_EOF))
            return out[:max_events]

        def close(self):
            self.closed = True

    m.poll, m.kqueue, m.kevent = Poller, KQueue, KEvent
    return m


def test_the_model_reproduces_xnus_poll_quirk():
    fake = xnu_select()
    a, b = socket.socketpair()
    with a, b:
        b.shutdown(socket.SHUT_WR)
        p = fake.poll()
        p.register(a, fake.POLLHUP | fake.POLLERR)
        assert p.poll(0), "under xnu a half-close reads as POLLHUP"


def test_a_half_closed_client_is_not_gone_on_macos(monkeypatch):
    monkeypatch.setattr(sockets, "select", xnu_select())
    a, b = socket.socketpair()
    with a:
        assert not sockets.hung_up(a)
        b.sendall(b'{"op": "ping"}\n')
        b.shutdown(socket.SHUT_WR)  # request sent; the client still reads the answer
        assert not sockets.hung_up(a)
        a.sendall(b"answer\n")
        assert b.recv(100) == b"answer\n"
        b.close()
        assert sockets.hung_up(a)
