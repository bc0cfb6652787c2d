"""`python -m menubar --headless --http` for real, in a subprocess: where it listens, the key
file it keeps, an answer through the official openai client, the addresses it refuses,
and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api_live import TIMEOUT, data_url, png

ROOT = Path(__file__).resolve().parents[1]
openai = pytest.importorskip("openai")


def start(tmp_path: Path, model, *flags: str) -> tuple[subprocess.Popen, Path, dict]:
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "MLX_VLM_PORT_RUNTIME_DIR": str(tmp_path / "run"), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "menubar", "--headless", "--model", str(model), *flags],
                                cwd=ROOT, env=env, stdout=out, stderr=out)
    return proc, log, env


def wait_for(proc: subprocess.Popen, log: Path, pattern: str) -> re.Match:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(log.read_text())


def test_the_headless_service_serves_the_api_and_keeps_its_key_private(tiny_path, tmp_path):
    proc, log, env = start(tmp_path, tiny_path, "--http", "127.0.0.1:0")
    try:
        url, key_file = wait_for(proc, log, r"local API at (http://127\.0\.0\.1:\d+/v1) \(key in (.+)\)").groups()
        wait_for(proc, log, r" ready in ")
        key_path = Path(key_file)
        assert key_path.is_relative_to(tmp_path / "home")  # the app's data folder
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
        client = openai.OpenAI(base_url=url, api_key=key_path.read_text().strip(), max_retries=0, timeout=TIMEOUT)
        reply = client.chat.completions.create(model=str(tiny_path), max_tokens=3, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png(1))}}]}])
        assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("flags, words", [
    (["--http", "0.0.0.0:0"], "not a loopback address"),
    (["--http", "192.0.2.1:0", "--http-public"], "cannot serve the API on 192.0.2.1:0"),
    (["--http", "example.com:80"], "give an IP address"),
    (["--http", "127.0.0.1:99999"], "the port must be"),
])
def test_refused_addresses_end_it_with_one_line(tiny_path, tmp_path, flags, words):
    proc, log, _ = start(tmp_path, tiny_path, *flags)
    try:
        assert proc.wait(TIMEOUT) == 1
        lines = log.read_text().strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
        assert not (tmp_path / "run" / "caption.sock").exists()  # the socket it had taken is given back
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_public_address_is_served_when_asked_for_explicitly(tiny_path, tmp_path):
    proc, log, _ = start(tmp_path, tiny_path, "--http", "0.0.0.0:0", "--http-public")
    try:
        port = wait_for(proc, log, r"local API at http://0\.0\.0\.0:(\d+)/v1").group(1)
        key = Path(wait_for(proc, log, r"\(key in (.+)\)").group(1)).read_text().strip()
        models = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0).models.list()
        assert models.data[0].id == str(tiny_path)
    finally:
        proc.kill()
        proc.wait(10)
