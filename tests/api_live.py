"""A real local API for tests: the shared Worker on a tiny random checkpoint and
ApiServer (uvicorn) in this process on an ephemeral loopback port, plus raw HTTP helpers.

Every socket has a timeout, so a bug fails a test instead of hanging the run."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import socket
import time
from pathlib import Path

from menubar.api_server import ApiServer
from menubar.worker import Worker
from tests.images import synthetic_image

TIMEOUT = 60.0
ALLOWED_ORIGIN = "https://allowed.example"


def png(seed: int, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    synthetic_image(w, h, seed).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(model: str, image: int = 1, text: str = "What is this?", **fields) -> dict:
    return {"model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": data_url(png(image))}}]}],
            **fields}


def endless_checkpoint(tiny: Path, dest: Path) -> Path:
    """A copy of `tiny` with no end-of-text token: it writes until max_tokens or until cancelled,
    so a test can hold the worker busy for as long as it needs, independent of speed."""
    if dest.exists():
        return dest
    shutil.copytree(tiny, dest)
    tok = dest / "tokenizer.json"
    tok.write_text(tok.read_text().replace("<|endoftext|>", "<|not-an-end|>"))
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|no-such-token|>"
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    gen = json.loads((dest / "generation_config.json").read_text())
    gen["eos_token_id"] = []
    (dest / "generation_config.json").write_text(json.dumps(gen))
    return dest


class Live:
    def __init__(self, model: Path, key_file: Path, *, max_queue: int = 4, header_timeout: float = 1.0):
        self.model, self.logs = str(model), []
        self.worker = Worker(self.model, max_queue=max_queue, log=self.logs.append).start()
        self.worker.load(self.model)
        deadline = time.monotonic() + TIMEOUT
        while self.worker.state != "ready":
            assert self.worker.state != "error" and time.monotonic() < deadline, self.logs
            time.sleep(0.02)
        self.api = ApiServer(self.worker, "127.0.0.1:0", key_file=key_file, origins=(ALLOWED_ORIGIN,),
                             header_timeout=header_timeout, log=self.logs.append).start()
        self.key, self.port, self.base = self.api.key, self.api.port, self.api.url

    def close(self) -> None:
        self.api.close()
        self.worker.stop()

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **extra}

    def call(self, method: str, path: str, body: dict | bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON body, raw body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            conn.request(method, path, body=raw, headers=self.headers() if headers is None else headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, _json(data), data
        finally:
            conn.close()

    def chat(self, body: dict | bytes, headers: dict | None = None):
        return self.call("POST", "/v1/chat/completions", body, headers)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)

    def wait_log(self, needle: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.logs):
                if needle in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line with {needle!r}: {self.logs[-20:]}")


def _json(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def assert_error(status: int, body, expected_status: int, *words: str) -> None:
    """OpenAI's error body, one line, no traceback."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert "Traceback" not in error["message"] and "\n" not in error["message"], error
    for word in words:
        assert word in error["message"], (word, error)


def sse_events(raw: bytes) -> list:
    """The data lines of a server-sent event stream, each event `data: ...` followed by a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
