"""The menubar's parts on their own: request validation, the worker, the line reader,
the entry point, the py2app recipe, and the rumps layer against a fake rumps."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from menubar import BUNDLE_ID
from captioning.captioner import Captioner
from captioning.errors import Exit, Failure
from menubar.jobs import Request, request_from_message
from menubar.settings import MODELS
from menubar.sockets import LineReader, RequestTooLarge, hung_up, peer_uid
from menubar.worker import Worker
from tests.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]


# --- request validation -------------------------------------------------------------------------
def png_b64(seed: int = 0) -> str:
    buf = io.BytesIO()
    synthetic_image(40, 30, seed).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


USAGE, BAD_IMAGE = Exit.USAGE, Exit.IMAGE


@pytest.mark.parametrize("request_, code, words", [
    ({}, USAGE, "exactly one"),
    ({"image_b64": "x", "image_path": "/a"}, USAGE, "exactly one"),
    ({"image_b64": "@@@"}, USAGE, "base64"),
    ({"image_b64": base64.b64encode(b"hello").decode()}, BAD_IMAGE, "not a readable image"),
    ({"image_path": "/no/such/file.png"}, BAD_IMAGE, "no such file"),
    ({"image_b64": png_b64(), "max_tokens": 0}, USAGE, "max_tokens"),
    ({"image_b64": png_b64(), "max_tokens": True}, USAGE, "max_tokens"),
    ({"image_b64": png_b64(), "temperature": "hot"}, USAGE, "temperature"),
    ({"image_b64": png_b64(), "top_p": 0}, USAGE, "top_p"),
    ({"image_b64": png_b64(), "do_image_splitting": 1}, USAGE, "do_image_splitting"),
    ({"image_b64": png_b64(), "detail": "Sharp"}, USAGE, "detail"),
    ({"image_b64": png_b64(), "system": 3}, USAGE, "system"),
    ({"image_b64": png_b64(), "prompt": ""}, USAGE, "prompt"),
    ({"image_b64": png_b64(), "id": [1]}, USAGE, "id"),
])
def test_bad_requests_are_refused_with_the_cli_codes(request_, code, words):
    with pytest.raises(Failure) as e:
        request_from_message({"op": "caption", **request_})
    assert e.value.code == code and words in e.value.message


def test_a_good_request_becomes_a_job():
    request = request_from_message({
        "op": "caption", "id": "x1", "image_b64": png_b64(), "prompt": "What?", "system": None, "max_tokens": 5,
        "temperature": 0, "max_image_tokens": None, "do_image_splitting": False, "detail": "Fast",
        "future_field": 1})
    assert request.id == "x1" and request.image.size == (40, 30)
    job = request.job
    assert job.prompt == "What?" and job.system is None and job.detail == "Fast"
    assert job.sampling.given() == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "min_p": 0.15,
                                    "repetition_penalty": 1.05}
    assert job.image.given() == {"do_image_splitting": False}


# --- the worker ------------------------------------------------------------------------------------
class Slow(Captioner):
    """The real Captioner with a slow fake model behind it."""

    def __init__(self, model):
        super().__init__(model)
        self.gate = threading.Event()

    def load(self):
        return self

    def stream(self, image, job):
        for i in range(50):
            self.gate.wait(0.01)
            yield types.SimpleNamespace(text=str(i), prompt_tokens=1, generation_tokens=i + 1, prompt_seconds=0.0,
                                        finish_reason=None)


def test_worker_bounds_its_queue_cancels_and_survives_a_bad_sink():
    worker = Worker("m", factory=Slow, max_queue=2, warmup=False, log=lambda line: None).start()
    try:
        worker.load("m")
        assert worker.wait_idle(10) and worker.state == "ready"
        replies = []
        first = Request(b"", sink=replies.append)
        assert worker.submit(first)
        deadline = time.monotonic() + 10
        while not replies:  # first is running
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.001)
        boom = Request(b"", sink=lambda m: 1 / 0)
        waits = [Request(b"", sink=replies.append) for _ in range(2)]
        assert worker.submit(boom) and worker.submit(waits[0]) and worker.submit(waits[1]) is False  # 2 may wait
        first.cancelled.set()
        assert worker.wait_idle(5)
        assert any(r["type"] == "error" and r["message"] == "cancelled" for r in replies if r["id"] == first.id)
        later = waits[1]
        assert worker.submit(later) and worker.wait_idle(5)
        assert replies[-1]["type"] == "done" and replies[-1]["id"] == later.id
        assert replies[-1]["text"] == "".join(str(i) for i in range(50))
    finally:
        worker.stop()
    assert not worker._thread.is_alive()
    assert worker.submit(Request(b"")) is False  # stopped


# --- sockets ---------------------------------------------------------------------------------------
def test_line_reader_is_bounded():
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(2)
        b.settimeout(2)
        b.sendall(b'{"op": "ping"}\n{"op"')
        reader = LineReader(a, limit=100, chunk=7)
        assert reader.readline() == b'{"op": "ping"}'
        b.sendall(b': "x"}\n' + b"y" * 500 + b"\nafter\n")
        assert reader.readline() == b'{"op": "x"}'
        with pytest.raises(RequestTooLarge):
            reader.readline()
        assert len(reader.buf) <= 101
        reader.discard_line()
        assert reader.readline() == b"after"
        b.sendall(b"tail without newline")
        b.shutdown(socket.SHUT_WR)
        assert reader.readline() == b"tail without newline" and reader.readline() is None


def test_peer_uid_and_hang_up():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a:
        if hasattr(socket, "SO_PEERCRED"):
            assert peer_uid(a) == os.getuid()
        b.shutdown(socket.SHUT_WR)
        assert not hung_up(a)  # a half-close still reads its answer
        b.close()
        assert hung_up(a)


# --- entry point, packaging, the rumps layer -----------------------------------------------------------
def test_python_m_menubar_off_macos_says_so_in_one_line():
    if sys.platform == "darwin":
        pytest.skip("on macOS this starts the app")
    done = subprocess.run([sys.executable, "-m", "menubar"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "macOS" in done.stderr and "--headless" in done.stderr
    assert "Traceback" not in done.stderr
