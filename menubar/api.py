"""The local OpenAI-compatible API as a plain ASGI app on the shared worker.

Handlers check the caller (Host, Origin, bearer key), read a bounded body, parse it
off the event loop, then only submit a Request to the worker and forward the replies
it streams; a client that disconnects cancels its job. menubar/api_server.py runs it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import sys
import time
import traceback
from typing import Callable

from menubar.openai_chat import (ApiError, Chat, StopText, chunk, completion, failure_error, model_card, models,
                                 parse_chat)
from menubar.worker import Worker

MAX_BODY = 32 * 1024 * 1024  # a base64 48 MP JPEG fits with room to spare
BODY_TIMEOUT = 30.0  # seconds for the whole body, once the headers are in
JSON = [(b"content-type", b"application/json")]


class Disconnected(Exception):
    pass


def _stderr(line: str) -> None:
    print(f"menubar: {line}", file=sys.stderr, flush=True)


def allowed_hosts(host: str, port: int) -> Callable[[str], bool]:
    """Which Host headers name this server: the bound address (and for loopback its names).
    A wildcard bind takes any IP literal; never an arbitrary name, which DNS rebinding could point here."""
    ip = ipaddress.ip_address(host)
    loopback = {"localhost", "127.0.0.1", "::1"} if ip.is_loopback or ip.is_unspecified else set()
    names = loopback | {str(ip)}

    def check(header: str) -> bool:
        name, _, given = header.rpartition(":") if not header.endswith("]") else (header, "", "")
        if not given.isdigit() or int(given) != port:
            return False
        name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        if name.lower() in names:
            return True
        if ip.is_unspecified:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    return check


class Api:
    def __init__(self, worker: Worker, key: str, host_ok: Callable[[str], bool], *, origins: tuple[str, ...] = (),
                 max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT,
                 log: Callable[[str], None] = _stderr):
        self.worker, self.key, self.host_ok, self.origins = worker, key.encode(), host_ok, set(origins)
        self.max_body, self.body_timeout, self._log = max_body, body_timeout, log
        self.created = int(time.time())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        extra = []
        try:
            extra = self._check_caller(headers)
            if scope["method"] == "OPTIONS" and extra:  # an allowed origin's preflight
                return await self._send(send, 204, b"", extra + [
                    (b"access-control-allow-methods", b"GET, POST"),
                    (b"access-control-allow-headers", b"authorization, content-type"),
                    (b"access-control-max-age", b"600")])
            self._check_key(headers)
            await self._route(scope, receive, send, headers, extra)
        except ApiError as e:
            more = [(b"www-authenticate", b"Bearer")] if e.status == 401 else []
            more += [(b"retry-after", b"1")] if e.status == 429 else []
            more += [(b"connection", b"close")] if e.status in (408, 413) else []  # the body's rest is unread
            await self._send_json(send, e.status, e.body(), extra + more)
        except Disconnected:
            pass
        except Exception as e:  # the server log gets the traceback; the client one line
            self._log(f"api: {scope['method']} {scope['path']}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            try:
                await self._send_json(send, 500, ApiError(500, "internal error").body(), extra)
            except Exception:
                pass  # the response had started: the connection just ends

    # --- checks ---------------------------------------------------------------------------
    def _check_caller(self, headers: dict) -> list:
        if not self.host_ok(headers.get("host", "")):
            raise ApiError(400, "the Host header does not name this server", code="invalid_host")
        origin = headers.get("origin")
        if origin is None:
            return []
        if origin not in self.origins:
            raise ApiError(403, f"requests from the web origin {origin!r} are refused (not allowed explicitly)",
                           code="origin_not_allowed", kind="permission_error")
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    def _check_key(self, headers: dict) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send \"Authorization: Bearer <key>\" (the menu's Copy API Key, "
                                "or the api-key file in the app's data folder)", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), self.key):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    # --- routes ---------------------------------------------------------------------------
    async def _route(self, scope, receive, send, headers: dict, extra: list) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        if path == "/v1/models":
            self._method(method, "GET")
            return await self._send_json(send, 200, models(self.worker.model_id, self.created), extra)
        if path.startswith("/v1/models/"):
            self._method(method, "GET")
            if path[len("/v1/models/"):] not in (self.worker.model_id, "default"):
                raise ApiError(404, "no such model", code="model_not_found")
            return await self._send_json(send, 200, model_card(self.worker.model_id, self.created), extra)
        if path == "/v1/chat/completions":
            self._method(method, "POST")
            return await self._chat(receive, send, headers, extra)
        raise ApiError(404, f"no such endpoint: {method} {scope['path']}", code="not_found")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, f"use {allowed} here", code="method_not_allowed")

    async def _read_body(self, receive, headers: dict) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise ApiError(413, f"the body is larger than {self.max_body} bytes", code="request_too_large")
        loop, body = asyncio.get_running_loop(), bytearray()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(408, "the body did not arrive in time", code="timeout") from None
            if message["type"] == "http.disconnect":
                raise Disconnected
            body += message.get("body", b"")
            if len(body) > self.max_body:
                raise ApiError(413, f"the body is larger than {self.max_body} bytes", code="request_too_large")
            if not message.get("more_body"):
                return bytes(body)

    async def _chat(self, receive, send, headers: dict, extra: list) -> None:
        body = await self._read_body(receive, headers)
        model = self.worker.model_id
        chat = await asyncio.to_thread(parse_chat, body, model)  # decoding an image takes a while
        request, loop, replies = chat.request, asyncio.get_running_loop(), asyncio.Queue()
        request.sink = lambda message: loop.call_soon_threadsafe(replies.put_nowait, message)
        if not self.worker.submit(request):
            raise ApiError(429, f"busy: {self.worker.queued} requests are waiting; try again",
                           code="rate_limit_exceeded", kind="rate_limit_error")
        gone, answered = asyncio.ensure_future(_disconnect(receive)), False
        try:
            first = await _next(replies, gone)
            if first["type"] == "error":
                answered = True
                raise failure_error(first)
            if chat.stream:
                await self._stream(send, chat, model, first, replies, gone, extra)
            else:
                text, finish, done = await _collect(chat, first, replies, gone)
                await self._send_json(send, 200, completion(chat, model, text, finish, done), extra)
                self._log(f"api: {request.id}: done, {done['generation_tokens']} tokens, {finish}")
            answered = True
        except Disconnected:
            self._log(f"api: {request.id}: client gone, cancelled")
        finally:
            if not answered:  # client gone or server stopping: say how the worker ends the job
                request.sink = lambda message: message["type"] == "piece" or self._log(
                    f"api: {request.id}: ended by the worker: "
                    f"{message.get('message') or message.get('finish_reason')}")
            # However this handler ends, nobody reads the job any more: the worker skips it,
            # or stops between two tokens.
            request.cancelled.set()
            gone.cancel()

    async def _stream(self, send, chat: Chat, model: str, first: dict, replies, gone, extra: list) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": extra + [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": chunk(chat, model, {"role": "assistant", "content": ""}),
                    "more_body": True})
        stop, message = StopText(chat.stops), first
        while message["type"] == "piece":
            text = stop.add(message["text"])
            if stop.stopped:
                chat.request.enough.set()
            if text:
                await send({"type": "http.response.body", "body": chunk(chat, model, {"content": text}),
                            "more_body": True})
            message = await _next(replies, gone)
        if message["type"] == "error":
            error = failure_error(message)
            self._log(f"api: {chat.request.id}: error: {error.message}")
            await send({"type": "http.response.body", "more_body": False,
                        "body": b"data: " + json.dumps(error.body()).encode() + b"\n\n"})
            return
        rest, finish = stop.flush(), "stop" if stop.stopped else message.get("finish_reason") or "stop"
        tail = (chunk(chat, model, {"content": rest}) if rest else b"") + chunk(chat, model, {}, finish)
        if chat.include_usage:
            tail += chunk(chat, model, {}, choices=False, done=message)
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
        self._log(f"api: {chat.request.id}: streamed, {message['generation_tokens']} tokens, {finish}")

    @staticmethod
    async def _send(send, status: int, body: bytes, headers: list) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _send_json(self, send, status: int, value: dict, headers: list) -> None:
        await self._send(send, status, json.dumps(value, ensure_ascii=False).encode(), headers + JSON)


async def _disconnect(receive) -> None:
    """Returns once the client has gone (the body is already read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _next(replies: asyncio.Queue, gone: asyncio.Future) -> dict:
    """The worker's next reply, or Disconnected once the client has gone."""
    if gone.done():
        raise Disconnected
    get = asyncio.ensure_future(replies.get())
    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    raise Disconnected


async def _collect(chat: Chat, message: dict, replies, gone) -> tuple[str, str, dict]:
    """The whole answer (cut at a stop string), its finish reason, and the worker's done reply."""
    stop, parts = StopText(chat.stops), []
    while message["type"] == "piece":
        parts.append(stop.add(message["text"]))
        if stop.stopped:
            chat.request.enough.set()
        message = await _next(replies, gone)
    if message["type"] == "error":
        raise failure_error(message)
    parts.append(stop.flush())
    return "".join(parts), "stop" if stop.stopped else message.get("finish_reason") or "stop", message
