"""OpenAI's chat-completions format for the local API: a request body → one worker
Request (one image, one question), and the worker's replies → completion objects,
stream chunks and error bodies. No sockets here: menubar/api.py serves these.

What is taken: system (or developer) messages and exactly one user message holding
text parts and exactly one image_url part with a data: URL. Nothing is ever fetched.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field

from captioning.errors import Exit, Failure
from captioning.images import read_image
from captioning.job import DEFAULT_PROMPT, Job
from captioning.protocol import options_from
from menubar.jobs import Request
from mlx_vlm_port.options import SamplingOptions, specs

MAX_PIXELS = 64_000_000  # a 48 MP phone photo fits; a decompression bomb does not
MAX_STOPS = 4  # as OpenAI
DETAILS = {"low": "Fast", "high": "Detailed", "auto": None}  # image_url.detail → Job.detail
# Fields clients commonly send that change nothing here when left at their no-op value.
NO_OPS = {"n": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "logprobs": (False,),
          "store": (False,), "parallel_tool_calls": (True, False)}
FREE = {"model", "messages", "stream", "stream_options", "stop", "response_format", "max_completion_tokens",
        "user", "metadata", "service_tier", *specs(SamplingOptions)}


class ApiError(Exception):
    """A request the API answers with an error status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Chat:
    """One parsed chat-completions request."""

    request: Request
    stream: bool = False
    include_usage: bool = False
    stops: tuple[str, ...] = ()
    created: int = field(default_factory=lambda: int(time.time()))


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_chat(body: bytes, model_id: str) -> Chat:
    """The request's Chat, every field checked; ApiError (400/404) names the bad one.
    Decodes the image, so call it off the event loop."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    for name, value in data.items():
        if name in NO_OPS:
            # bool vs number matters: 1 == True, but n=true or logprobs=0 is a client bug
            if value is not None and not any(value == ok and type(value) is type(ok) or
                                             isinstance(ok, int) and type(value) is float and value == ok
                                             for ok in NO_OPS[name]):
                raise bad(f"{name}={json.dumps(value)} is not supported here (only {json.dumps(NO_OPS[name][0])})",
                          name)
        elif name not in FREE:
            raise bad(f"unsupported parameter: {name}", name, "unsupported_parameter")
    model = data.get("model")
    if not isinstance(model, str):
        raise bad('"model" must be a string (GET /v1/models lists the one served)', "model")
    if model not in (model_id, "default"):
        raise ApiError(404, f"the model {model!r} is not served here; use {model_id!r} (or \"default\")",
                       param="model", code="model_not_found")
    schema = _json_schema(data.get("response_format"))
    stops = _stops(data)
    if schema is not None and stops:
        raise bad("stop cannot be combined with a JSON response_format (it would cut the JSON)", "stop")
    system, prompt, image, detail = _messages(data.get("messages"))
    stream = _flag(data, "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad('"stream_options" must be an object', "stream_options")
    include_usage = stream and _flag(options or {}, "include_usage", "stream_options.include_usage")
    job = Job(prompt, system, _sampling(data), detail=detail, json_schema=schema)
    return Chat(Request(image, job, id=f"chatcmpl-{secrets.token_hex(12)}"), stream, include_usage, stops)


def _json_schema(response_format) -> dict | None:
    """response_format → Job.json_schema: json_object is any JSON object; json_schema its
    "schema", checked here so an unenforceable one is a 400 before anything is queued."""
    from mlx_vlm_port.constrain import check_schema

    param = "response_format"
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise bad('response_format must be {"type": "text" | "json_object" | "json_schema", ...}', param)
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad('response_format.json_schema must be an object with a "schema" object', f"{param}.json_schema")
    try:
        check_schema(schema)
    except (ValueError, ImportError) as e:
        raise bad(str(e), f"{param}.json_schema.schema") from None
    return schema


def _flag(data: dict, name: str, param: str | None = None) -> bool:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(f'"{param or name}" must be true or false', param or name)
    return bool(value)


def _sampling(data: dict) -> SamplingOptions:
    if data.get("max_tokens") is not None and data.get("max_completion_tokens") is not None:
        raise bad("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    if data.get("max_tokens") is None:
        data = {**data, "max_tokens": data.get("max_completion_tokens")}
    return options_from(SamplingOptions, data, lambda name, why: bad(f'"{name}": {why}', name))


def _stops(data: dict) -> tuple[str, ...]:
    stop = data.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad(f'"stop" must be a non-empty string or a list of at most {MAX_STOPS} of them', "stop")
    return tuple(stops)


def _messages(messages) -> tuple[str | None, str, object, str | None]:
    """(system, question, decoded image, detail preset) from the messages."""
    if not isinstance(messages, list) or not messages:
        raise bad('"messages" must be a non-empty list', "messages")
    system, user = [], None
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"{param} must be an object with a role", param)
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_text_only(message.get("content"), f"{param}.content"))
        elif role == "user":
            if user is not None:
                raise bad("send one user message: this server answers one question about one image "
                          "(earlier turns are not supported)", param)
            user = (message.get("content"), f"{param}.content")
        else:
            raise bad(f"role {role!r} is not supported: send system messages and one user message", f"{param}.role")
    if user is None:
        raise bad("a user message with the image is required", "messages")
    question, image, detail = _user(*user)
    return "\n\n".join(system) or None, question, image, detail


def _text_only(content, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise bad(f"{param} must be a string or a list of text parts", param)


def _user(content, param: str) -> tuple[str, object, str | None]:
    if not isinstance(content, list):
        raise bad(f"{param} must be a list of parts with exactly one image_url part (a data: URL)", param)
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append((part.get("image_url"), where))
        else:
            raise bad(f"{where} must be a text or an image_url part", where)
    if len(images) != 1:
        raise bad(f"exactly one image_url part per request is supported, got {len(images)}", param)
    spec, where = images[0]
    url, detail = (spec.get("url"), spec.get("detail")) if isinstance(spec, dict) else (None, None)
    if not isinstance(url, str):
        raise bad(f'{where}.image_url must be an object with a "url" string', f"{where}.image_url")
    if detail is not None and detail not in DETAILS:
        raise bad(f'{where}.image_url.detail must be one of {", ".join(DETAILS)}', f"{where}.image_url.detail")
    question = "\n".join(t for t in texts if t.strip()) or DEFAULT_PROMPT
    return question, decode_image(url, f"{where}.image_url.url"), DETAILS.get(detail)


def decode_image(url: str, param: str, max_pixels: int = MAX_PIXELS):
    """A data: URL's image, decoded; anything else is refused (nothing is fetched)."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "?"
        raise bad(f"only data: URLs are accepted (got a {scheme}: URL); this server fetches nothing", param,
                  "invalid_image_url")
    head, comma, payload = url[5:].partition(",")
    if not comma or not head.endswith(";base64"):
        raise bad("the image must be a base64 data: URL (data:image/png;base64,...)", param, "invalid_image_url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad("the image's data: URL is not valid base64", param, "invalid_image_url") from None
    _check_pixels(data, param, max_pixels)
    try:
        return read_image("the image", data=data)
    except Failure as e:
        raise bad(e.message, param, "invalid_image") from None


def _check_pixels(data: bytes, param: str, max_pixels: int) -> None:
    """Refuse a huge image from its header alone, before any pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as e:  # PIL's own limit, far above ours: the numbers are in its words
        size = re.search(r"\((\d+) pixels\)", str(e))
        raise bad(f"the image has {size.group(1) if size else 'too many'} pixels; at most "
                  f"{max_pixels // 1_000_000} MP are accepted", param, "image_too_large") from None
    except Exception:
        return  # not a format PIL reads lazily: read_image decides (and words) it
    if width * height > max_pixels:
        raise bad(f"the image is {width}×{height} pixels; at most {max_pixels // 1_000_000} MP are accepted",
                  param, "image_too_large")


def failure_error(message: dict) -> ApiError:
    """A worker's error reply → the API error: the job's fault 400, no model 503, else 500."""
    text, code = message.get("message", "unknown error"), message.get("code")
    if code in (Exit.USAGE, Exit.IMAGE):
        return bad(text)
    if text.startswith(("model unavailable", "the caption service stopped")):
        return ApiError(503, text, code="model_unavailable")
    return ApiError(500, text)


# --- replies -----------------------------------------------------------------------------
def usage(done: dict) -> dict:
    prompt, generated = done.get("prompt_tokens", 0), done.get("generation_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def completion(chat: Chat, model: str, text: str, finish: str, done: dict) -> dict:
    return {"id": chat.request.id, "object": "chat.completion", "created": chat.created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage(done)}


def chunk(chat: Chat, model: str, delta: dict, finish: str | None = None, *, choices: bool = True,
          done: dict | None = None) -> bytes:
    """One server-sent event in OpenAI's chunk format. With include_usage every chunk carries
    "usage": null but the last, which has no choices and the usage."""
    body = {"id": chat.request.id, "object": "chat.completion.chunk", "created": chat.created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if chat.include_usage:
        body["usage"] = usage(done) if done is not None else None
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def models(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [model_card(model_id, created)]}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "local"}


class StopText:
    """Text released as it streams, held back only as much as could still begin a stop string;
    once one appears, everything from it on is dropped."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.hold = stops, max((len(s) for s in stops), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def add(self, piece: str) -> str:
        """The text that can be released now; sets `stopped` once a stop string appeared."""
        if self.stopped:
            return ""
        self.text += piece
        found = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            self.text, self.stopped = self.text[:min(found)], True
            return self.flush()
        upto = max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent:upto], upto
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
