"""A caption job (what the worker runs) and the service's request → job validation.

Replies are the wire messages of app/protocol.py, produced by the worker and
handed to the job's `sink`: {"type": "piece"|"done"|"error", "id", ...}.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from app.captioner import DEFAULT_PROMPT, DETAILS

# The CLI's exit codes, carried in error replies.
USAGE, BAD_IMAGE, MODEL = 2, 3, 4

_ids = itertools.count(1)


def _drop(message: dict) -> None:
    pass


@dataclass
class Job:
    image: Any                      # a path, encoded bytes or a PIL image (Captioner.stream takes each)
    prompt: str = DEFAULT_PROMPT
    options: dict = field(default_factory=dict)  # keyword arguments of Captioner.stream
    id: Any = field(default_factory=lambda: f"job-{next(_ids)}")
    sink: Callable[[dict], None] = _drop  # called on the worker thread; must not block
    tag: Any = None                 # the submitter's own bookkeeping, untouched by the worker
    cancelled: threading.Event = field(default_factory=threading.Event)


class BadRequest(ValueError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# name → (accepted types, check, what the check means); bool is excluded from numbers explicitly.
_NUMBER = (int, float)
_OPTIONS = {  # as permissive as the CLI's own checks: the service must not refuse what the CLI accepts
    "system": ((str, type(None)), lambda v: True, "a string (or null)"),
    "max_tokens": ((int,), lambda v: v >= 1, "a positive integer"),
    "temperature": (_NUMBER, lambda v: v >= 0, "a number >= 0"),
    "min_p": (_NUMBER, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "repetition_penalty": (_NUMBER, lambda v: v > 0, "a number > 0"),
    "detail": ((str, type(None)), lambda v: v is None or v in DETAILS, f"one of {', '.join(DETAILS)} (or null)"),
    "max_image_tokens": ((int, type(None)), lambda v: v is None or v >= 1, "a positive integer (or null)"),
    "longest_edge": ((int, type(None)), lambda v: v is None or v >= 1, "a positive integer (or null)"),
    "do_image_splitting": ((bool, type(None)), lambda v: True, "true, false or null"),
}


def job_from_request(request: dict) -> Job:
    """Validate a {"op": "caption"} request and decode its image (on the caller's thread,
    so a bad image is answered without queueing). Raises BadRequest(code, message)."""
    from mlx_vlm_port.image import ImageError, load_image

    job_id = request.get("id")
    if isinstance(job_id, bool) or (job_id is not None and not isinstance(job_id, (str, int))):
        raise BadRequest(USAGE, '"id" must be a string or an integer')
    prompt = request.get("prompt", DEFAULT_PROMPT)
    if prompt is None:
        prompt = DEFAULT_PROMPT
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(USAGE, '"prompt" must be a non-empty string')
    options = {}
    for name, (types, check, meaning) in _OPTIONS.items():
        if name not in request:
            continue
        value = request[name]
        ok = isinstance(value, types) and (type(value) is not bool or bool in types)
        if not ok or not check(value):
            raise BadRequest(USAGE, f'"{name}" must be {meaning}')
        options[name] = value  # None only where Captioner.stream takes None ("the default")
    path, b64 = request.get("image_path"), request.get("image_b64")
    if (path is None) == (b64 is None):
        raise BadRequest(USAGE, 'give exactly one of "image_path" and "image_b64"')
    if path is not None:
        if not isinstance(path, str) or not path:
            raise BadRequest(USAGE, '"image_path" must be a non-empty string')
        source: Any = path
    else:
        if not isinstance(b64, str):
            raise BadRequest(USAGE, '"image_b64" must be a base64 string')
        try:
            source = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(USAGE, '"image_b64" is not valid base64') from None
    try:
        image = load_image(source)
    except ImageError as e:
        raise BadRequest(BAD_IMAGE, str(e)) from None
    job = Job(image=image, prompt=prompt, options=options)
    if job_id is not None:
        job.id = job_id
    return job
