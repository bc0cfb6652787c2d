"""What the worker queues: a Job (captioning.job) about one decoded image, with
the reply sink and cancel flag of whoever submitted it; and a service request
turned into one.

Replies are the wire messages of captioning/protocol.py, produced by the worker
and handed to the request's `sink`: {"type": "piece"|"done"|"error", "id", ...}.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from captioning.errors import Exit, Failure
from captioning.images import read_image
from captioning.job import Job
from captioning.protocol import job_from_request

_ids = itertools.count(1)


def _drop(message: dict) -> None:
    pass


@dataclass
class Request:
    image: Any                      # a decoded PIL image, or encoded bytes (decoded on the worker)
    job: Job = field(default_factory=Job)
    id: Any = field(default_factory=lambda: f"job-{next(_ids)}")
    sink: Callable[[dict], None] = _drop  # called on the worker thread; must not block
    tag: Any = None                 # the submitter's own bookkeeping, untouched by the worker
    cancelled: threading.Event = field(default_factory=threading.Event)
    enough: threading.Event = field(default_factory=threading.Event)  # end it now as finished ("stop")


def request_from_message(message: dict) -> Request:
    """Validate a {"op": "caption"} message and decode its image (on the caller's thread,
    so a bad image is answered without queueing). Raises Failure(USAGE or IMAGE)."""
    request_id = message.get("id")
    if isinstance(request_id, bool) or (request_id is not None and not isinstance(request_id, (str, int))):
        raise Failure(Exit.USAGE, '"id" must be a string or an integer')
    job = job_from_request(message)
    path, b64 = message.get("image_path"), message.get("image_b64")
    if (path is None) == (b64 is None):
        raise Failure(Exit.USAGE, 'give exactly one of "image_path" and "image_b64"')
    if path is not None:
        if not isinstance(path, str) or not path:
            raise Failure(Exit.USAGE, '"image_path" must be a non-empty string')
        image = read_image(path, path=path)
    else:
        if not isinstance(b64, str):
            raise Failure(Exit.USAGE, '"image_b64" must be a base64 string')
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise Failure(Exit.USAGE, '"image_b64" is not valid base64') from None
        image = read_image("the image", data=data)
    request = Request(image, job)
    if request_id is not None:
        request.id = request_id
    return request
