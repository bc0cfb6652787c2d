"""The local API under hostile and broken clients. After every case the server still
answers the next good request, and no client ever sees a traceback.

The model here never writes an end-of-text token, so a request with a large max_tokens
holds the worker until it is cancelled: queueing and cancellation are checked by
events (log lines, queue counts), never by durations."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib

import pytest

from menubar.api import MAX_BODY
from menubar.api_server import ApiServer
from menubar.worker import Worker
from tests.api_live import (ALLOWED_ORIGIN, TIMEOUT, Live, assert_error, chat_body, data_url, endless_checkpoint,
                            png)

pytest.importorskip("uvicorn")
MAX_QUEUE = 4


@pytest.fixture(scope="module")
def live(tiny_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    server = Live(endless_checkpoint(tiny_path, folder / "endless"), folder / "api-key", max_queue=MAX_QUEUE)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def still_serving(live):
    yield
    status, body, _ = live.chat(chat_body(live.model, image=2))
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert not any("Traceback" in line for line in live.logs)


def image_part(url) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def with_content(live, content, **fields) -> dict:
    return {"model": live.model, "max_tokens": 2, "messages": [{"role": "user", "content": content}], **fields}


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels (its data is a stub): only its header may be read."""
    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + part(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + part(b"IDAT", zlib.compress(b"\0" * 64)) + part(b"IEND", b""))


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (lambda m: {"messages": []}, '"model"'),
    (lambda m: {"model": m, "messages": "hi"}, "messages"),
    (lambda m: {"model": m, "messages": [{"role": "user", "content": "no image here"}]}, "image_url"),
    (lambda m: {"model": m, "messages": [{"role": "tool", "content": "x"}]}, "not supported"),
    (lambda m: {"model": m, "messages": [{"content": "x"}]}, "role"),
    (lambda m: chat_body(m, max_tokens="many"), "max_tokens"),
    (lambda m: chat_body(m, temperature=-1), "temperature"),
    (lambda m: chat_body(m, top_p=0), "top_p"),
    (lambda m: chat_body(m, seed=1.5), "seed"),
    (lambda m: chat_body(m, seed=2**64), "seed"),
    (lambda m: chat_body(m, seed=-1), "seed"),
    (lambda m: chat_body(m, temperature=float("nan")), "temperature"),  # sent as NaN, which Python's json reads
    (lambda m: chat_body(m, repetition_penalty=float("inf")), "repetition_penalty"),
    (lambda m: chat_body(m, stream="yes"), "stream"),
    (lambda m: chat_body(m, stop=["a", "b", "c", "d", "e"]), "stop"),
    (lambda m: chat_body(m, stop=[""]), "stop"),
    (lambda m: chat_body(m, n=2), "n=2"),
    (lambda m: chat_body(m, tools=[]), "unsupported parameter: tools"),
    (lambda m: chat_body(m, max_tokens=3, max_completion_tokens=4), "not both"),
    (lambda m: chat_body(m, response_format={"type": "json_object"}, stop="}"), "stop cannot be combined"),
    (lambda m: chat_body(m, response_format={"type": "json_schema"}), "schema"),
    (lambda m: chat_body(m, response_format={"type": "xml"}), "response_format"),
    (lambda m: {**chat_body(m), "messages": chat_body(m)["messages"] * 2}, "one user message"),
]


@pytest.mark.parametrize("make, words", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_malformed_requests_get_a_400_that_names_the_problem(live, make, words):
    body = make if isinstance(make, bytes) else make(live.model)
    status, reply, _ = live.chat(body)
    assert_error(status, reply, 400, words)


BAD_IMAGES = [
    ([image_part("data:image/png;base64,not*base64!")], "not valid base64"),
    ([image_part(data_url(b"these bytes are not an image"))], "not a known image format"),
    ([image_part(data_url(b""))], "the image"),
    ([image_part("data:image/png," + "x" * 10)], "base64 data: URL"),
    ([image_part("file:///etc/passwd")], "fetches nothing"),
    ([image_part("https://example.com/cat.png")], "fetches nothing"),
    ([image_part(data_url(png(1)))] * 2, "exactly one image_url"),
    ([{"type": "image_url", "image_url": "data:,"}], "url"),
    ([{"type": "audio", "audio": "x"}], "text or an image_url"),
    ([image_part(data_url(huge_png_header(9000, 9000)))], "9000×9000 pixels"),
    ([image_part(data_url(huge_png_header(20000, 20000)))], "400000000 pixels"),
]


@pytest.mark.parametrize("content, words", BAD_IMAGES, ids=range(len(BAD_IMAGES)))
def test_bad_images_and_urls_are_refused_and_nothing_is_fetched(live, content, words):
    status, reply, _ = live.chat(with_content(live, content))
    assert_error(status, reply, 400, words)


def test_a_body_over_the_limit_is_refused_by_its_length_or_as_it_streams(live):
    limit = MAX_BODY
    with live.raw() as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Length: %d\r\n\r\n" % (live.port, live.key.encode(), limit + 1))
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ")
    with live.raw() as s:  # chunked, no length given: counted as it arrives
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" % (live.port, live.key.encode()))
        answer, reader = [], None
        reader = threading.Thread(target=lambda: answer.append(_read_all(s)), daemon=True)
        reader.start()
        chunk, sent = b"A" * (1 << 20), 0
        try:
            while sent <= limit and reader.is_alive():
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may hang up once it has answered
        reader.join(TIMEOUT)
    assert answer and answer[0].startswith(b"HTTP/1.1 413 "), answer
    assert b"larger than" in answer[0] and b"Traceback" not in answer[0]


def _read_all(s) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_a_slow_header_client_holds_nothing_and_is_cut_off(live):
    with live.raw() as slow:
        slow.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1")  # ...and never finishes
        status, body, _ = live.call("GET", "/v1/models")  # served meanwhile
        assert status == 200 and body["data"][0]["id"] == live.model
        assert slow.recv(1024) == b""  # the header deadline closed it, without an answer


def test_garbage_instead_of_http_gets_a_400_and_a_closed_connection(live):
    with live.raw() as s:
        s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Traceback" not in answer


@pytest.mark.parametrize("auth, words", [(None, "missing API key"), ("Bearer sk-wrong", "incorrect API key"),
                                         ("Basic dXNlcjpwYXNz", "missing API key"), ("Bearer ", "missing API key")])
def test_a_missing_or_wrong_key_is_401(live, auth, words):
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat_body(live.model))]:
        status, reply, _ = live.call(method, path, body, headers=headers)
        assert_error(status, reply, 401, words)


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "localhost", "",
                                  "127.0.0.1:{port}@evil.example"])
def test_a_foreign_host_header_is_refused(live, host):
    status, reply, _ = live.call("GET", "/v1/models", headers=live.headers(Host=host.format(port=live.port)))
    assert_error(status, reply, 400, "Host")


def test_names_of_the_loopback_address_are_accepted(live):
    for host in (f"localhost:{live.port}", f"127.0.0.1:{live.port}"):
        assert live.call("GET", "/v1/models", headers=live.headers(Host=host))[0] == 200


def test_browser_origins_are_refused_unless_allowed(live):
    conn_headers = live.headers(Origin="https://evil.example")
    status, reply, raw = live.call("POST", "/v1/chat/completions", chat_body(live.model), headers=conn_headers)
    assert_error(status, reply, 403, "evil.example")
    status, _, _ = live.call("OPTIONS", "/v1/chat/completions", headers={"Origin": "https://evil.example",
                                                                         "Access-Control-Request-Method": "POST"})
    assert status == 403
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=TIMEOUT)
    try:
        conn.request("OPTIONS", "/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN})
        preflight = conn.getresponse()
        preflight.read()
        assert preflight.status == 204 and preflight.getheader("access-control-allow-origin") == ALLOWED_ORIGIN
        conn.request("GET", "/v1/models", headers=live.headers(Origin=ALLOWED_ORIGIN))
        allowed = conn.getresponse()
        allowed.read()
        assert allowed.status == 200 and allowed.getheader("access-control-allow-origin") == ALLOWED_ORIGIN
        conn.request("GET", "/v1/models", headers=live.headers())
        plain = conn.getresponse()
        plain.read()
        assert plain.getheader("access-control-allow-origin") is None  # no CORS for anyone else
    finally:
        conn.close()


def test_unknown_paths_and_methods(live):
    assert_error(*live.call("GET", "/v1/completions")[:2], 404, "no such endpoint")
    assert_error(*live.call("GET", "/v1/chat/completions")[:2], 405, "POST")
    assert_error(*live.call("GET", "/v1/models/gpt-4")[:2], 404, "no such model")
    assert_error(*live.chat(chat_body("gpt-4"))[:2], 404, "not served here")


def _stream_until_first_piece(live, **fields):
    """A streaming request the endless model never finishes; returns (socket, its id) once text flows."""
    body = json.dumps(chat_body(live.model, max_tokens=100000, stream=True, **fields)).encode()
    s = live.raw()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (live.port, live.key.encode(), len(body), body))
    data = b""
    while data.count(b"data: ") < 2:  # the role chunk, then the first text
        data += s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 ")
    return s, json.loads(data.split(b"data: ")[1].split(b"\n\n")[0])["id"]


def test_fifty_concurrent_requests_queue_up_to_the_bound_and_the_rest_get_429(live):
    blocker, blocker_id = _stream_until_first_piece(live)  # the worker is busy until it goes
    results: list = []

    def client(seed: int) -> None:
        try:
            results.append(live.chat(chat_body(live.model, image=seed, max_tokens=3))[:2])
        except Exception as e:  # recorded, so a lost answer fails below
            results.append((None, repr(e)))

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(50)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while len(results) < 50 - MAX_QUEUE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(results) == 50 - MAX_QUEUE and live.worker.queued == MAX_QUEUE
    finally:
        blocker.close()  # disconnecting cancels it; the queued ones run
    for t in threads:
        t.join(TIMEOUT)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * MAX_QUEUE + [429] * (50 - MAX_QUEUE), results
    for status, body in results:
        if status == 429:
            assert_error(status, body, 429, "busy")
            assert body["error"]["type"] == "rate_limit_error"
        else:
            assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 3
    assert "cancelled" in live.wait_log(f"api: {blocker_id}: ended by the worker")


def test_a_client_gone_mid_answer_cancels_its_generation(live):
    s, request_id = _stream_until_first_piece(live, temperature=1.0, min_p=0.0)
    s.close()
    live.wait_log(f"api: {request_id}: client gone, cancelled")
    assert "cancelled" in live.wait_log(f"api: {request_id}: ended by the worker")
    assert live.worker.wait_idle(TIMEOUT)
    # A non-streaming client that leaves while the model writes: cancelled as well.
    body = json.dumps(chat_body(live.model, max_tokens=100000)).encode()
    gone_before = sum("client gone, cancelled" in line for line in live.logs)
    with live.raw() as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (live.port, live.key.encode(), len(body), body))
        deadline = time.monotonic() + TIMEOUT
        while live.worker.state != "busy" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert live.worker.state == "busy"
    deadline = time.monotonic() + TIMEOUT
    while sum("client gone, cancelled" in line for line in live.logs) == gone_before:
        assert time.monotonic() < deadline, live.logs[-5:]
        time.sleep(0.02)
    assert live.worker.wait_idle(TIMEOUT)


def test_no_model_is_a_503(tmp_path):
    worker = Worker(str(tmp_path / "no-such-checkpoint"), warmup=False, log=lambda line: None).start()
    worker.load(str(tmp_path / "no-such-checkpoint"))
    api = ApiServer(worker, "127.0.0.1:0", key_file=tmp_path / "key", log=lambda line: None).start()
    try:
        assert worker.wait_idle(TIMEOUT) and worker.state == "error"
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=TIMEOUT)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat_body(worker.model_id)),
                     headers={"Authorization": f"Bearer {api.key}", "Host": f"127.0.0.1:{api.port}"})
        response = conn.getresponse()
        assert_error(response.status, json.loads(response.read()), 503, "model unavailable")
    finally:
        api.close()
        worker.stop()


def test_the_key_file_is_private_and_kept(tmp_path):
    import os
    import stat

    from menubar.api_server import api_key

    key = api_key(tmp_path / "data" / "api-key")
    assert key.startswith("sk-local-") and len(key) > 40
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "api-key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    assert api_key(tmp_path / "data" / "api-key") == key  # the same key on the next start
    os.chmod(tmp_path / "data" / "api-key", 0o644)
    assert api_key(tmp_path / "data" / "api-key") == key
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "api-key").st_mode) == 0o600  # made private again
    assert base64.urlsafe_b64decode(key[len("sk-local-"):] + "=")  # random bytes, url-safe


def test_a_kept_alive_connection_outlives_the_header_deadline_while_it_is_used(live):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=TIMEOUT)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3 * live.api.header_timeout:  # several deadlines' worth of requests
            conn.request("GET", "/v1/models", headers=live.headers())
            assert conn.getresponse().read() and conn.sock is not None  # the same connection throughout
            time.sleep(live.api.header_timeout / 10)
    finally:
        conn.close()


def test_oversized_headers_are_a_400_and_a_closed_connection(live):
    with live.raw() as s:
        answer: list = []
        reader = threading.Thread(target=lambda: answer.append(_read_all(s)), daemon=True)
        reader.start()
        try:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Filler: %s\r\n\r\n"
                      % (live.port, b"a" * (1 << 20)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up once it had answered
        reader.join(TIMEOUT)
        answer = answer[0] if answer else b""
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Traceback" not in answer


def test_stopping_the_server_cancels_what_it_was_streaming(tiny_path, tmp_path):
    server = Live(endless_checkpoint(tiny_path, tmp_path / "endless"), tmp_path / "api-key")
    try:
        s, request_id = _stream_until_first_piece(server)
        with s:
            server.api.close()  # the menu's Local API toggled off, mid-answer
            assert "cancelled" in server.wait_log(f"api: {request_id}: ended by the worker")
        assert server.worker.wait_idle(TIMEOUT)
    finally:
        server.close()
