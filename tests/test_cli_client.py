"""The CLI's service client against a tiny fake server that speaks captioning.protocol.

This is a protocol test: the real server (menubar/) has its own tests. The
fake also gives `--detect`/`--draw` a canned model answer, which the tiny
random checkpoint could never produce.
"""

import base64
import json
import os
import pty
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from captioning import client, protocol
from captioning.errors import Failure
from captioning.job import DEFAULT_PROMPT, DETECT_PROMPT, Job
from mlx_vlm_port.options import ImageOptions, SamplingOptions
from tests.test_cli import read_until_closed

ROOT = Path(__file__).resolve().parents[1]


def _service_says(data: bytes) -> str:
    """The real service's error for these image bytes, so the fake below says the same."""
    from menubar.jobs import request_from_message

    try:
        request_from_message({"op": "caption", "image_b64": base64.b64encode(data).decode()})
    except Failure as e:
        return e.message
    raise AssertionError("the service took bytes that are not an image")


SERVICE_BAD_IMAGE = _service_says(b"these bytes are not an image")
DETECT_ANSWER = "Here you go:\n```json\n[{'label': 'cat', 'bbox': [0.1, 0.2, 0.5, 0.6]},]\n```"


class FakeService:
    """A caption service on a Unix socket in `folder`; `mode` picks its behaviour:
    "ok" streams `pieces` then done, "error" replies with `error`, "drop" closes
    after the first piece, "close" closes without a word. Like the real service it
    checks each caption request with the protocol's own rules (refusing a bad one
    with a usage error) and answers a ping with every field the real pong has."""

    def __init__(self, folder: Path, model: str = "fake/model", pieces=("A grey ", "square."),
                 mode: str = "ok", error: tuple = (3, SERVICE_BAD_IMAGE),
                 gate: threading.Event | None = None):
        self.model, self.pieces, self.mode, self.error = model, list(pieces), mode, error
        self.gate = gate  # when given, the pieces after the first wait for it (at most 30 s)
        self.requests: list[dict] = []
        self.jobs: list = []  # the caption requests as the service reads them
        self.path = folder / "caption.sock"
        service = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                request = protocol.decode(self.rfile.readline())
                service.requests.append(request)
                send = lambda m: self.wfile.write(protocol.encode(m))  # noqa: E731
                if request["op"] == "ping":
                    return send({"type": "pong", "model": service.model, "pid": os.getpid(), "state": "ready",
                                 "queued": 0})
                rid = request["id"]
                try:
                    service.jobs.append(protocol.job_from_request(request))
                except Failure as e:
                    return send({"id": rid, "type": "error", "code": e.code, "message": e.message})
                if not (request.get("image_b64") or request.get("image_path")):
                    return send({"id": rid, "type": "error", "code": 2, "message": "no image"})
                if service.mode == "close":
                    return
                if service.mode == "error":
                    code, message = service.error
                    return send({"id": rid, "type": "error", "code": code, "message": message})
                for i, piece in enumerate(service.pieces):
                    if i and service.gate is not None:
                        service.gate.wait(30)
                    send({"id": rid, "type": "piece", "text": piece})
                    self.wfile.flush()
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


def cli_env(**changes) -> dict:
    # offline: a slow ping falls back to a local model, which must never be a download
    env = {**{k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}, "HF_HUB_OFFLINE": "1"}
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def cli(*args, stdin: bytes | None = None, importtime: bool = False, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "app.caption", *map(str, args)], cwd=ROOT,
                          input=stdin if stdin is not None else b"", capture_output=True, timeout=120,
                          env=env or cli_env())


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


def test_a_file_too_big_for_one_request_line_goes_by_path(service, grey_png, monkeypatch):
    from captioning.engine import ServiceEngine

    assert "image_b64" in client.image_fields(path=grey_png)
    monkeypatch.setattr(protocol, "MAX_REQUEST_BYTES", grey_png.stat().st_size)  # base64 would not fit
    assert client.image_fields(path=grey_png) == {"image_path": str(grey_png.resolve())}
    result = ServiceEngine(client.ping()).run("grey.png", Job(), lambda piece: None, path=str(grey_png))
    assert result.text == "A grey square." and service.captions[-1]["image_path"] == str(grey_png.resolve())


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


def test_every_generation_flag_reaches_the_service_as_given(service, grey_png):
    done = cli(grey_png, "--system", "Be brief.", "-p", "What is it?", "--max-tokens", 9, "--temperature", 0.7,
               "--top-p", 0.9, "--min-p", 0.05, "--repetition-penalty", 1.3, "--seed", 11, "--detail", "fast",
               "--max-image-tokens", 48, "--longest-edge", 640, "--no-split")
    assert done.returncode == 0, done.stderr
    (job,) = service.jobs
    assert job == Job("What is it?", "Be brief.",
                      SamplingOptions(max_tokens=9, temperature=0.7, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
                                      seed=11),
                      ImageOptions(max_image_tokens=48, longest_edge=640, do_image_splitting=False), "Fast")
    done = cli(grey_png)  # and with no flags, every default
    assert done.returncode == 0, done.stderr
    assert service.jobs[-1] == Job()


def test_pieces_reach_a_terminal_before_the_answer_ends(runtime, grey_png):
    """The service holds back everything after its first piece until the test has seen
    that piece on the CLI's terminal: only a CLI that streams can show it in time."""
    gate = threading.Event()
    fake = FakeService(runtime, gate=gate)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "app.caption", str(grey_png)], cwd=ROOT, stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=cli_env())
    os.close(follower)
    try:
        shown, deadline = b"", time.monotonic() + 20
        while b"A grey" not in shown and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                shown += os.read(leader, 4096)
        streamed = b"A grey" in shown
        gate.set()
        shown += read_until_closed(leader)
        assert proc.wait(timeout=60) == 0
        assert streamed, "nothing was shown before the service sent the rest"
        assert shown.replace(b"\r\n", b"\n") == b"A grey square.\n"
    finally:
        gate.set()
        os.close(leader)
        proc.kill()
        fake.stop()


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
    fake = FakeService(runtime, mode="error", error=(3, SERVICE_BAD_IMAGE))
    try:
        done = cli(grey_png)
        assert done.returncode == 3
        assert error_lines(done) == [f"caption: error: {grey_png} is not a readable image (not a known image format)"]
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


# --- what the README promises of the command line -----------------------------------------------

def test_file_paths_given_as_text_on_stdin_are_captioned(service, grey_png, tmp_path):
    other = tmp_path / "other.png"
    Image.new("RGB", (30, 20), (9, 9, 9)).save(other)
    done = cli("-", "--json", stdin=f"{grey_png}\n{other}\n".encode())
    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in map(json.loads, done.stdout.decode().splitlines())] == [str(grey_png), str(other)]
    assert [base64.b64decode(r["image_b64"]) for r in service.captions] == [grey_png.read_bytes(),
                                                                             other.read_bytes()]


def test_the_model_variable_picks_the_model_like_the_flag(service, grey_png):
    done = cli(grey_png, env=cli_env(MLX_VLM_PORT_MODEL="fake/model"))  # the service's own model: it answers
    assert done.returncode == 0 and done.stdout.decode() == "A grey square.\n"
    done = cli(grey_png, env=cli_env(MLX_VLM_PORT_MODEL="someone/elses-model"))  # another: loaded here, offline
    assert done.returncode == 4
    assert error_lines(done)[-1].startswith("caption: error: cannot load the model: someone/elses-model: not in")
    assert [r["op"] for r in service.requests] == ["ping", "caption", "ping"]


def test_debug_adds_the_traceback_to_the_one_line(grey_png):
    done = cli(grey_png, "--no-service", "--model", "/no/such/model")
    assert done.returncode == 4 and len(error_lines(done)) == 1
    debug = cli(grey_png, "--no-service", "--model", "/no/such/model", "--debug")
    assert debug.returncode == 4
    lines = error_lines(debug)
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == error_lines(done)[0]


def test_copy_without_a_clipboard_prints_the_caption_and_exits_5(service, grey_png):
    done = cli(grey_png, "--copy", env=cli_env(DISPLAY=None, WAYLAND_DISPLAY=None))
    assert done.returncode == 5
    assert done.stdout.decode() == "A grey square.\n"
    assert error_lines(done) == ["caption: error: --copy: no graphical session (neither DISPLAY nor "
                                 "WAYLAND_DISPLAY is set)"]


def test_a_closed_pipe_stops_quietly_with_exit_1(service, grey_png):
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "app.caption", str(grey_png)], cwd=ROOT, stdout=write,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=cli_env())
    os.close(write)
    os.close(read)  # like `| head -0`: gone before the caption is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err == b""
