"""The CLI's service client against a tiny fake server that speaks captioning.protocol.

This is a protocol test: the real server (menubar/) has its own tests. The
fake also gives `--detect`/`--draw` a canned model answer, which the tiny
random checkpoint could never produce.
"""

import base64
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from captioning import client, protocol
from captioning.job import DEFAULT_PROMPT, DETECT_PROMPT

ROOT = Path(__file__).resolve().parents[1]
DETECT_ANSWER = "Here you go:\n```json\n[{'label': 'cat', 'bbox': [0.1, 0.2, 0.5, 0.6]},]\n```"


class FakeService:
    """A caption service on a Unix socket in `folder`; `mode` picks its behaviour:
    "ok" streams `pieces` then done, "error" replies with `error`, "drop" closes
    after the first piece, "close" closes without a word."""

    def __init__(self, folder: Path, model: str = "fake/model", pieces=("A grey ", "square."),
                 mode: str = "ok", error: tuple = (3, "image data is not a readable image")):
        self.model, self.pieces, self.mode, self.error = model, list(pieces), mode, error
        self.requests: list[dict] = []
        self.path = folder / "caption.sock"
        service = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                request = protocol.decode(self.rfile.readline())
                service.requests.append(request)
                send = lambda m: self.wfile.write(protocol.encode(m))  # noqa: E731
                if request["op"] == "ping":
                    return send({"type": "pong", "model": service.model, "pid": os.getpid()})
                rid = request["id"]
                if service.mode == "close":
                    return
                if service.mode == "error":
                    code, message = service.error
                    return send({"id": rid, "type": "error", "code": code, "message": message})
                for piece in service.pieces:
                    send({"id": rid, "type": "piece", "text": piece})
                    if service.mode == "drop":
                        return
                send({"id": rid, "type": "done", "text": "".join(service.pieces), "model": service.model,
                      "prompt_tokens": 12, "generation_tokens": len(service.pieces), "seconds": 0.25})

        self.server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def captions(self) -> list[dict]:
        return [r for r in self.requests if r["op"] == "caption"]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def runtime(monkeypatch):
    folder = Path(tempfile.mkdtemp(prefix="mvp-", dir="/tmp"))  # AF_UNIX paths must stay short
    monkeypatch.setenv("MLX_VLM_PORT_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def service(runtime):
    fake = FakeService(runtime)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def grey_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "grey.png"
    Image.new("RGB", (200, 100), (128, 128, 128)).save(path)
    return path


def cli(*args, stdin: bytes | None = None, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    return subprocess.run([sys.executable, *flags, "-m", "app.caption", *map(str, args)], cwd=ROOT,
                          input=stdin if stdin is not None else b"", capture_output=True, timeout=120, env=env)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.decode().splitlines() if not line.startswith("import time:")]


# --- the client module itself ---------------------------------------------------------------

def test_ping_and_streamed_caption(service):
    assert client.ping()["model"] == "fake/model"
    pieces = []
    done = client.caption({"image_b64": "aGk=", "prompt": "hi"}, pieces.append)
    assert pieces == ["A grey ", "square."]
    assert done["type"] == "done" and done["text"] == "A grey square."
    request = service.captions[0]
    assert request["op"] == "caption" and request["id"] and request["prompt"] == "hi"


def test_error_reply_carries_the_exit_code(runtime):
    fake = FakeService(runtime, mode="error", error=(4, "model gone"))
    try:
        with pytest.raises(client.ServiceError) as e:
            client.caption({"image_b64": "aGk=", "prompt": "hi"})
        assert (e.value.code, e.value.message) == (4, "model gone")
    finally:
        fake.stop()


def test_no_socket_or_stale_socket_is_unavailable(runtime):
    with pytest.raises(client.ServiceUnavailable):
        client.ping()
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on any more
    stale.bind(str(runtime / "caption.sock"))
    stale.close()
    with pytest.raises(client.ServiceUnavailable):
        client.ping()
    with pytest.raises(client.ServiceUnavailable):
        client.caption({"image_b64": "aGk=", "prompt": "hi"})


def test_listener_that_never_answers_is_unavailable(runtime):
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(runtime / "caption.sock"))
    mute.listen(4)  # the kernel accepts; nobody ever reads or replies
    try:
        with pytest.raises(client.ServiceUnavailable):
            client.ping(timeout=0.3)
    finally:
        mute.close()


def test_closed_before_answer_is_unavailable_but_mid_answer_is_an_error(runtime):
    fake = FakeService(runtime, mode="close")
    with pytest.raises(client.ServiceUnavailable):
        client.caption({"image_b64": "aGk=", "prompt": "hi"})
    fake.stop()
    fake = FakeService(runtime, mode="drop")
    try:
        with pytest.raises(client.ServiceError) as e:
            client.caption({"image_b64": "aGk=", "prompt": "hi"})
        assert e.value.code == 1
    finally:
        fake.stop()


def test_same_model(tmp_path):
    assert client.same_model("a/b", "a/b") and not client.same_model("a/b", "a/c")
    assert not client.same_model("a/b", None)
    (tmp_path / "m").mkdir()
    assert client.same_model(str(tmp_path / "m"), str(tmp_path / "." / "m"))


# --- the CLI through the service ------------------------------------------------------------

def test_cli_hands_the_job_to_the_service_without_loading_mlx(service, grey_png):
    done = cli(grey_png, "--max-tokens", 7, "--no-split", importtime=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "A grey square.\n"
    assert error_lines(done) == []
    modules = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line]
    assert not [m for m in modules if m == "mlx" or m.startswith("mlx.")]
    (request,) = service.captions
    assert base64.b64decode(request["image_b64"]) == grey_png.read_bytes()
    assert request["prompt"] == DEFAULT_PROMPT and request["max_tokens"] == 7
    assert request["do_image_splitting"] is False and request["system"] is None


def test_cli_json_through_service(service, grey_png):
    done = cli("-", "--json", stdin=grey_png.read_bytes())
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record == {"path": "-", "caption": "A grey square.", "model": "fake/model", "prompt_tokens": 12,
                      "generation_tokens": 2, "seconds": 0.25}


def test_cli_detect_and_draw_with_canned_answer(runtime, grey_png, tmp_path):
    fake = FakeService(runtime, pieces=[DETECT_ANSWER[:20], DETECT_ANSWER[20:]])
    try:
        out = tmp_path / "boxes.png"
        done = cli(grey_png, "--detect", "cat", "--draw", out)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == "cat: 0.1 0.2 0.5 0.6\n"
        assert fake.captions[0]["prompt"] == DETECT_PROMPT.format(query="cat")
        with Image.open(out) as drawn:
            drawn = drawn.convert("RGB")
            assert drawn.size == (200, 100)
            # box (20, 20)-(100, 60): its left edge is coloured, its inside untouched
            assert drawn.getpixel((20, 40)) != (128, 128, 128)
            assert drawn.getpixel((60, 45)) == (128, 128, 128)
            assert drawn.getpixel((150, 90)) == (128, 128, 128)
        done = cli(grey_png, "--detect", "cat", "--json")
        assert json.loads(done.stdout)["boxes"] == [{"label": "cat", "bbox": [0.1, 0.2, 0.5, 0.6]}]
    finally:
        fake.stop()


def test_cli_maps_service_errors_to_exit_codes(runtime, grey_png):
    fake = FakeService(runtime, mode="error", error=(3, "image data is not a readable image"))
    try:
        done = cli(grey_png)
        assert done.returncode == 3
        assert error_lines(done) == [f"caption: error: {grey_png} is not a readable image"]
    finally:
        fake.stop()


def test_cli_skips_a_service_with_another_model(runtime, grey_png, tiny_path):
    fake = FakeService(runtime, model="some/other-model")
    try:
        done = cli(grey_png, "--model", tiny_path, "--max-tokens", 2)
        assert done.returncode == 0, done.stderr
        assert fake.captions == [] and [r["op"] for r in fake.requests] == ["ping"]
        assert done.stdout.decode() != "A grey square.\n"
    finally:
        fake.stop()
    fake = FakeService(runtime, model=str(tiny_path))  # the same model: the service does it
    try:
        done = cli(grey_png, "--model", tiny_path)
        assert done.stdout.decode() == "A grey square.\n" and len(fake.captions) == 1
    finally:
        fake.stop()


def test_cli_falls_back_silently_on_a_stale_socket(runtime, grey_png, tiny_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime / "caption.sock"))
    stale.close()
    done = cli(grey_png, "--model", tiny_path, "--max-tokens", 2)
    assert done.returncode == 0 and done.stderr == b""


def test_no_service_flag_never_connects(service, grey_png, tiny_path):
    done = cli(grey_png, "--model", tiny_path, "--max-tokens", 2, "--no-service")
    assert done.returncode == 0, done.stderr
    assert service.requests == []
