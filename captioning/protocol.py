"""The local caption service's wire format: JSON lines over a Unix socket.

Request (one line):  {"op": "caption", "id": str | int, "image_path" | "image_b64": str,
                      "prompt": str, "system": str | null,
                      "detail": "Fast" | "Balanced" | "Detailed" | null,
                      "json_schema": {JSON Schema} | null (the answer is held to it),
                      and any of mlx_vlm_port.options' fields (null = the default):
                      SamplingOptions: max_tokens, temperature, top_p, min_p,
                        repetition_penalty, seed;
                      ImageOptions: max_image_tokens, min_image_tokens, min_tiles,
                        max_tiles, use_thumbnail (LFM2-VL), longest_edge (SmolVLM),
                        do_image_splitting}
                 or  {"op": "ping"}
Replies (lines):     {"id", "type": "piece", "text"} ... then
                     {"id", "type": "done", "text", "model", "prompt_tokens",
                      "generation_tokens", "seconds", "finish_reason"}
                 or  {"id", "type": "error", "code": <exit code, captioning.errors.Exit>, "message"}
                 or  {"type": "pong", "model", "pid", "state", "queued"}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from mlx_vlm_port.options import ImageOptions, SamplingOptions, specs

from .errors import Exit, Failure
from .job import DEFAULT_PROMPT, Job

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a base64 screenshot fits with room to spare


def runtime_dir() -> Path:
    """A per-user folder for the socket (created 0700 by the server)."""
    if os.environ.get("MLX_VLM_PORT_RUNTIME_DIR"):
        return Path(os.environ["MLX_VLM_PORT_RUNTIME_DIR"])
    if sys.platform == "darwin":
        # The per-user temp folder (/var/folders/…/T/) from confstr(_CS_DARWIN_USER_TEMP_DIR = 65537):
        # the same for every process of the user, whereas $TMPDIR is missing under launchd
        # agents and some Shortcuts runs (tempfile would then pick /tmp, and nobody would meet).
        try:
            folder = os.confstr(65537)
        except (OSError, ValueError):
            folder = None
        if folder:
            return Path(folder) / f"mlx-vlm-port-{os.getuid()}"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mlx-vlm-port"
    return Path(tempfile.gettempdir()) / f"mlx-vlm-port-{os.getuid()}"


def socket_path() -> Path:
    return runtime_dir() / "caption.sock"


def encode(message: dict) -> bytes:
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()


def decode(line: bytes) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def job_fields(job: Job) -> dict:
    """A Job as request fields (job_from_request's inverse; unset options are left out)."""
    fields = {"prompt": job.prompt, "system": job.system, "detail": job.detail,
              **job.sampling.given(), **job.image.given()}
    if job.json_schema is not None:
        fields["json_schema"] = job.json_schema
    return fields


def job_from_request(request: dict) -> Job:
    """A caption request's Job, every field checked; Failure(USAGE) names the bad one."""
    prompt = request.get("prompt")
    if prompt is None:
        prompt = DEFAULT_PROMPT
    if not isinstance(prompt, str) or not prompt.strip():
        raise Failure(Exit.USAGE, '"prompt" must be a non-empty string')
    system = request.get("system")
    if system is not None and not isinstance(system, str):
        raise Failure(Exit.USAGE, '"system" must be a string (or null)')
    schema = request.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise Failure(Exit.USAGE, '"json_schema" must be a JSON Schema object (or null)')
    try:
        return Job(prompt, system, options_from(SamplingOptions, request, _usage),
                   options_from(ImageOptions, request, _usage), request.get("detail"), schema)
    except ValueError as e:  # the detail preset's name (Job checks it)
        raise Failure(Exit.USAGE, f'"detail": {e}') from None


def options_from(cls, fields: dict, error):
    """The options of class `cls` given in `fields` (null: the default), each checked;
    a bad one raises error(name, why)."""
    values = {}
    for name, spec in specs(cls).items():
        if fields.get(name) is not None:
            try:
                values[name] = spec.check(fields[name])
            except ValueError as e:
                raise error(name, str(e)) from None
    return cls(**values)


def _usage(name: str, why: str) -> Failure:
    return Failure(Exit.USAGE, f'"{name}": {why}')
