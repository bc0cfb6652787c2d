"""Where a job runs: the menubar app's service when one answers (it already holds
a model), else a model loaded in this process. `Engine.run` takes an input and
a Job and returns a Result either way; a service that goes away before
answering is replaced by a local model without a word."""

from __future__ import annotations

import os
import time
from typing import Callable

from . import client, protocol
from .captioner import Captioner
from .errors import Exit, Failure
from .images import read_image, tidy
from .job import Job, Result

OnPiece = Callable[[str], None]


class LocalEngine:
    """Loads the model on first use (so bad inputs fail fast) and runs it here."""

    def __init__(self, model: str | None):
        self.captioner = Captioner(model)

    def run(self, label: str, job: Job, on_piece: OnPiece, *, path: str | None = None,
            data: bytes | None = None, need_image: bool = False) -> Result:
        image = read_image(label, path=path, data=data)  # before the model load: a bad image fails fast
        result = self.captioner.load().run(image, job, on_piece)
        result.image = image
        return result


class ServiceEngine:
    """Hands jobs to the running service, which already holds a model."""

    def __init__(self, pong: dict):
        self.model = str(pong.get("model") or "service")

    @staticmethod
    def connect(requested_model: str | None) -> "ServiceEngine | None":
        """The engine if a service answers (and serves the requested model), else None."""
        try:
            pong = client.ping()
        except client.ServiceUnavailable:
            return None
        if requested_model and not client.same_model(requested_model, pong.get("model")):
            return None
        return ServiceEngine(pong)

    def run(self, label: str, job: Job, on_piece: OnPiece, *, path: str | None = None,
            data: bytes | None = None, need_image: bool = False) -> Result:
        try:
            fields = client.image_fields(data, path)
        except FileNotFoundError:
            raise Failure(Exit.IMAGE, f"{label}: no such file") from None
        except IsADirectoryError:
            raise Failure(Exit.IMAGE, f"{label} is a directory, not an image") from None
        except OSError as e:
            raise Failure(Exit.IMAGE, f"{label}: cannot read ({e.strerror or e})") from None
        if fields.get("image_b64") == "":
            raise Failure(Exit.IMAGE, f"{label} is empty (0 bytes)")
        image = read_image(label, path=path, data=data) if need_image else None
        tic, pieces = time.perf_counter(), []

        def piece(text: str) -> None:
            pieces.append(text)
            on_piece(text)

        try:
            done = client.caption({**fields, **protocol.job_fields(job)}, piece)
        except client.ServiceError as e:
            raise Failure(e.code, tidy(e.message, label)) from None
        # "done" carries the whole text; a service that only streamed still counts.
        text = str(done.get("text") or "") or "".join(pieces)
        return Result(text, str(done.get("model") or self.model),
                      int(done.get("prompt_tokens") or 0), int(done.get("generation_tokens") or 0),
                      float(done.get("seconds") or time.perf_counter() - tic), done.get("finish_reason"), image)


class Engine:
    """The service if one answers and serves `model` (unless `use_service` is False),
    else a local model; asked only at the first job, so a bad input costs no ping."""

    def __init__(self, model: str | None, use_service: bool = True):
        self.model, self.use_service = model, use_service
        self.backend: LocalEngine | ServiceEngine | None = None

    def local(self) -> LocalEngine | None:
        """The in-process engine when no service does the jobs (decided once, at first need)."""
        if self.backend is None:
            requested = self.model or os.environ.get("MLX_VLM_PORT_MODEL")  # else: whatever it serves
            service = ServiceEngine.connect(requested) if self.use_service else None
            self.backend = service or LocalEngine(self.model)
        return self.backend if isinstance(self.backend, LocalEngine) else None

    def run(self, label: str, job: Job, on_piece: OnPiece, *, path: str | None = None,
            data: bytes | None = None, need_image: bool = False) -> Result:
        self.local()
        try:
            return self.backend.run(label, job, on_piece, path=path, data=data, need_image=need_image)
        except client.ServiceUnavailable:  # the service went away before answering: do it here
            self.backend = LocalEngine(self.model)
            return self.backend.run(label, job, on_piece, path=path, data=data, need_image=need_image)
