"""The local caption service for real: `python -m menubar --headless` on the tiny random
checkpoint in a subprocess, spoken to over its Unix socket (and through the CLI).

Every socket has a timeout and every subprocess is killed in a finally, so a bug
fails a test instead of hanging the run."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from captioning.protocol import MAX_REQUEST_BYTES
from tests.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0


def png(seed: int, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    synthetic_image(w, h, seed).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """One headless service in its own runtime folder; stderr goes to a file (a pipe could fill)."""

    def __init__(self, model: str | Path, run_dir: Path | None = None):
        # A short folder under /tmp: AF_UNIX paths are limited to ~104 bytes.
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="mvs-", dir="/tmp"))
        self.sock_path = self.run_dir / "caption.sock"
        self.log_path = Path(tempfile.mkstemp(prefix="mvs-log-", dir="/tmp")[1])
        self.env = {**os.environ, "MLX_VLM_PORT_RUNTIME_DIR": str(self.run_dir), "PYTHONUNBUFFERED": "1"}
        self.model = str(model)
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Server":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "menubar", "--headless", "--model", self.model],
                                         cwd=ROOT, env=self.env, stdout=log, stderr=log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log()}"
            try:
                pong = request(self.sock_path, {"op": "ping"})[0]
                if pong.get("state") == "ready":
                    return pong
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str | re.Pattern, count: int, timeout: float = 10.0) -> int:
        """How many times the log holds `needle` (a string, or a pattern's matches), once
        that is `count` or the timeout passes: the server logs a job just after sending
        its last reply, so give it that moment."""
        def found() -> int:
            log = self.log()
            return len(needle.findall(log)) if isinstance(needle, re.Pattern) else log.count(needle)

        deadline = time.monotonic() + timeout
        while found() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return found()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


def connect(path: Path, timeout: float = TIMEOUT) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def read_replies(s: socket.socket, stop_at=("done", "error", "pong")) -> list[dict]:
    """Reply lines up to (and including) the first final one."""
    out, buf = [], b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
            if out[-1].get("type") in stop_at:
                return out
        data = s.recv(65536)
        if not data:
            return out
        buf += data


def request(path: Path, message: dict | bytes, timeout: float = TIMEOUT) -> list[dict]:
    with connect(path, timeout) as s:
        s.sendall(message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n")
        return read_replies(s)


def caption_request(seed: int, **extra) -> dict:
    return {"op": "caption", "id": f"img-{seed}", "image_b64": base64.b64encode(png(seed)).decode(),
            "temperature": 0, "max_tokens": 6, **extra}


@pytest.fixture(scope="module")
def server(tiny_path):
    srv = Server(tiny_path)
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_ping_socket_and_folder_permissions(server, tiny_path):
    pong = request(server.sock_path, {"op": "ping"})[0]
    assert pong["type"] == "pong" and pong["pid"] == server.proc.pid and pong["model"] == str(tiny_path)
    assert stat.S_ISSOCK(os.lstat(server.sock_path).st_mode)
    assert stat.S_IMODE(os.lstat(server.sock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.run_dir).st_mode) == 0o700


def test_the_model_is_warmed_up_before_it_is_ready(server):
    log = server.log()
    assert "warm-up: 1 token in" in log and "warm-up failed" not in log
    assert log.index("warm-up: 1 token") < log.index(" ready in ")


def test_caption_streams_pieces_then_done(server, tiny_path):
    replies = request(server.sock_path, caption_request(1))
    *pieces, done = replies
    assert done["type"] == "done" and done["id"] == "img-1" and done["model"] == str(tiny_path)
    assert all(p["type"] == "piece" and p["id"] == "img-1" for p in pieces)
    assert done["text"] == "".join(p["text"] for p in pieces)
    assert 1 <= done["generation_tokens"] <= 6 and done["prompt_tokens"] > 0 and done["seconds"] > 0
    by_path = tempfile.NamedTemporaryFile(suffix=".png", dir="/tmp", delete=False)
    try:
        by_path.write(png(1))
        by_path.close()
        via_path = {**caption_request(1), "image_path": by_path.name}
        del via_path["image_b64"]
        assert request(server.sock_path, via_path)[-1]["text"] == done["text"]
    finally:
        os.unlink(by_path.name)


def test_errors_carry_cli_codes_and_the_connection_survives(server):
    with connect(server.sock_path) as s:
        for line, code in [(b"{not json\n", 2), (b"[1, 2]\n", 2), (b'{"op": "dance"}\n', 2),
                           (json.dumps({"op": "caption", "image_b64": base64.b64encode(b"junk").decode()}).encode()
                            + b"\n", 3),
                           (json.dumps({"op": "caption", "image_path": "/no/such.png"}).encode() + b"\n", 3),
                           (json.dumps(caption_request(2, max_tokens=-1)).encode() + b"\n", 2)]:
            s.sendall(line)
            (reply,) = read_replies(s)
            assert reply["type"] == "error" and reply["code"] == code, (line[:40], reply)
        s.sendall(b'\n{"op": "ping"}\n')  # blank lines are skipped; the same connection still works
        assert read_replies(s)[0]["type"] == "pong"


def test_oversized_request_is_refused_and_the_server_stays_up(server):
    with connect(server.sock_path) as s:
        head = b'{"op": "caption", "image_b64": "'
        s.sendall(head)
        chunk = b"A" * (1 << 20)
        sent = len(head)
        replies: list = []
        reader = threading.Thread(target=lambda: replies.extend(read_replies(s)), daemon=True)
        reader.start()
        try:
            while sent <= MAX_REQUEST_BYTES + len(chunk):
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may hang up once it has answered
        reader.join(TIMEOUT)
    assert replies and replies[0]["type"] == "error" and replies[0]["code"] == 2
    assert "larger than" in replies[0]["message"]
    assert request(server.sock_path, {"op": "ping"})[0]["type"] == "pong"
    assert request(server.sock_path, caption_request(3))[-1]["type"] == "done"


def test_client_disconnect_mid_answer_does_not_wedge_it(server):
    for _ in range(3):
        s = connect(server.sock_path)
        s.sendall(json.dumps(caption_request(4, max_tokens=2000, temperature=1.0, min_p=0.0)).encode() + b"\n")
        first = s.recv(64)
        assert first  # the answer had started
        s.close()
    # half-sent request, then gone
    s = connect(server.sock_path)
    s.sendall(b'{"op": "caption", "image_b')
    s.close()
    replies = request(server.sock_path, caption_request(5))
    assert replies[-1]["type"] == "done" and replies[-1]["id"] == "img-5"
    # A 2000-token answer outlives its client by seconds: the server noticed and dropped it.
    assert server.wait_log("img-4: client gone, abandoned", 1) >= 1


def test_twenty_concurrent_clients_each_get_their_own_answer(server):
    seeds = list(range(100, 120))
    alone = {seed: request(server.sock_path, caption_request(seed))[-1]["text"] for seed in seeds}
    assert len(set(alone.values())) > 1  # different images, different captions
    results: dict = {}

    def client(seed: int) -> None:
        try:
            results[seed] = request(server.sock_path, caption_request(seed))
        except Exception as e:  # recorded, so a lost reply fails the test below
            results[seed] = e

    threads = [threading.Thread(target=client, args=(seed,)) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results) == seeds
    for seed, replies in results.items():
        assert isinstance(replies, list), replies
        assert {r["id"] for r in replies} == {f"img-{seed}"}
        assert replies[-1]["type"] == "done" and replies[-1]["text"] == alone[seed]


def test_cli_uses_the_running_service(server, tiny_path, tmp_path):
    image = tmp_path / "cli.png"
    image.write_bytes(png(7))
    before = _foreign_jobs(server, at_least=0)
    done = subprocess.run([sys.executable, "-m", "app.caption", str(image), "--model", str(tiny_path), "--json",
                           "--max-tokens", "6", "--temperature", "0"],
                          cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    # Every raw request in these tests has an "img-" id; the CLI's job is the one without.
    assert _foreign_jobs(server, at_least=before + 1) == before + 1  # the service ran it, not a local model
    direct = request(server.sock_path, caption_request(7))[-1]
    assert record["caption"] == direct["text"]


def test_the_cli_with_every_kind_of_flag_answers_the_same_through_the_service_and_alone(server, tiny_path,
                                                                                      tmp_path):
    image = tmp_path / "flags.png"
    image.write_bytes(png(8))
    flags = [str(image), "--model", str(tiny_path), "--json", "--system", "Answer briefly.", "-p", "What is this?",
             "--max-tokens", "5", "--temperature", "0", "--repetition-penalty", "1.3", "--detail", "fast",
             "--max-image-tokens", "32"]
    before = _foreign_jobs(server, at_least=0)
    served = subprocess.run([sys.executable, "-m", "app.caption", *flags], cwd=ROOT, env=server.env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert served.returncode == 0, served.stderr
    assert _foreign_jobs(server, at_least=before + 1) == before + 1  # the service ran it
    alone = subprocess.run([sys.executable, "-m", "app.caption", *flags, "--no-service"], cwd=ROOT, env=server.env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr
    a, b = json.loads(served.stdout), json.loads(alone.stdout)
    assert (a["caption"], a["prompt_tokens"], a["generation_tokens"]) == (
        b["caption"], b["prompt_tokens"], b["generation_tokens"])
    default = subprocess.run([sys.executable, "-m", "app.caption", str(image), "--model", str(tiny_path), "--json",
                              "--max-tokens", "5", "--temperature", "0", "--no-service"],
                             cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=TIMEOUT)
    assert json.loads(default.stdout)["prompt_tokens"] != a["prompt_tokens"]  # the flags did reach the model


def _foreign_jobs(server: Server, at_least: int = 1, timeout: float = 10.0) -> int:
    """Jobs the service ran that these tests did not send raw (theirs have "img-" ids),
    once there are `at_least` of them or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [line for line in server.log().splitlines()
                if line.startswith("menubar: job ") and ": done," in line and "job img-" not in line]
        if len(jobs) >= at_least or time.monotonic() > deadline:
            return len(jobs)
        time.sleep(0.02)


def test_stale_socket_is_replaced(tiny_path):
    run_dir = Path(tempfile.mkdtemp(prefix="mvs-", dir="/tmp"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run_dir / "caption.sock"))
    stale.close()  # a crashed run: the file stays, nothing listens
    srv = Server(tiny_path, run_dir)
    try:
        srv.start()
        assert "stale" in srv.log()
        assert request(srv.sock_path, caption_request(8))[-1]["type"] == "done"
    finally:
        srv.stop()


def test_a_second_server_exits_while_one_is_live(server, tiny_path):
    second = Server(tiny_path, server.run_dir)
    try:
        second.start(wait=False)
        assert second.proc.wait(TIMEOUT) == 1
        lines = second.log().strip().splitlines()
        assert len(lines) == 1 and "already running" in lines[0] and str(server.proc.pid) in lines[0]
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
        second.log_path.unlink(missing_ok=True)
    assert request(server.sock_path, {"op": "ping"})[0]["pid"] == server.proc.pid  # untouched


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_it_cleanly_and_remove_the_socket(tiny_path, sig):
    srv = Server(tiny_path)
    try:
        srv.start()
        assert request(srv.sock_path, caption_request(9))[-1]["type"] == "done"
        srv.proc.send_signal(sig)
        assert srv.proc.wait(TIMEOUT) == 0, srv.log()
        assert not srv.sock_path.exists() and "Traceback" not in srv.log()
    finally:
        srv.stop()


def test_a_model_that_cannot_load_ends_the_server_with_a_message(tmp_path):
    srv = Server(tmp_path / "no-such-checkpoint")
    try:
        srv.start(wait=False)
        assert srv.proc.wait(TIMEOUT) == 1
        assert "no-such-checkpoint" in srv.log() and "Traceback" not in srv.log()
        assert not srv.sock_path.exists()
    finally:
        srv.stop()
