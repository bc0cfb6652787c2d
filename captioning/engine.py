"""Where a caption is computed: the running service, or a model loaded in this
process. Both take a Job and return a Result; the CLI does not care which ran."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

from . import client
from .batch import Source
from .captioner import Captioner

OnPiece = Callable[[str], None]


class Failure(Exception):
    """One input failed; `code` is the CLI exit code (3 image, 4 model, 5 capture, 1 other)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Job:
    prompt: str
    system: str | None = None
    options: dict = field(default_factory=dict)  # Captioner.stream keywords / protocol fields


@dataclass
class Result:
    text: str
    model: str
    prompt_tokens: int
    generation_tokens: int
    seconds: float
    image: object = None  # the decoded PIL image when we have it (for --draw)


HEIF_BRANDS = (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypheif", b"ftyphevc")


def _enable_heif(head: bytes) -> str:
    """Register pillow-heif for HEIC input if installed; else a hint for the error line."""
    if head[4:12] not in HEIF_BRANDS:
        return ""
    try:
        import pillow_heif
    except ImportError:
        return "; install pillow-heif to read HEIC photos"
    pillow_heif.register_heif_opener()
    return ""


def tidy(message: str, name: str) -> str:
    """An image error as the user should read it: named after their input, not
    "image data" or a BytesIO repr (PIL's "cannot identify" wording says little)."""
    message = re.sub(r"^image data\b", name, message)
    message = re.sub(r"\(cannot identify image file .*\)$", "(unknown or unsupported format)", message)
    return message if name in message else f"{name}: {message}"


def read_image(source: Source):
    """The source as an RGB PIL image, or Failure(3) saying what is wrong with it."""
    import warnings

    from PIL import Image

    from mlx_vlm_port.image import ImageError, load_image

    what, name = (source.path if source.path is not None else source.data), source.label
    head = source.data[:16] if source.data is not None else b""
    if source.path is not None:
        try:
            with open(source.path, "rb") as f:
                head = f.read(16)
        except IsADirectoryError:
            pass  # load_image words this one
        except FileNotFoundError:
            raise Failure(3, f"{name}: no such file") from None
        except OSError as e:
            raise Failure(3, f"{name}: cannot read ({e.strerror or e})") from None
    hint = _enable_heif(head)
    with warnings.catch_warnings():
        # PIL only *warns* between its pixel limit and twice that; refuse those too
        # rather than decode a few GB.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return load_image(what)
        except Image.DecompressionBombWarning as e:
            raise Failure(3, f"{name} is too large to decode safely ({e})") from None
        except ImageError as e:
            raise Failure(3, tidy(str(e), name) + hint) from None
        except MemoryError:
            raise Failure(3, f"{name} is too large to decode") from None


class LocalEngine:
    """Loads the model on first use (so bad inputs fail fast) and runs it here."""

    def __init__(self, model: str):
        self.captioner = Captioner(model)

    def load(self) -> None:
        if self.captioner.model is not None:
            return
        try:
            self.captioner.load()
        except Exception as e:  # ModelLoadError, and anything a broken checkpoint throws
            from mlx_vlm_port.load import ModelLoadError

            message = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            name = self.captioner.model_id
            raise Failure(4, f"cannot load the model{'' if name in message else ' ' + name}: {message}") from e

    def run(self, source: Source, job: Job, on_piece: OnPiece, need_image: bool = False) -> Result:
        image = read_image(source)  # before the model load: a bad image fails fast
        self.load()
        from mlx_vlm_port.processor import UnsupportedOption

        tic = time.perf_counter()
        pieces, last = [], None
        try:
            for last in self.captioner.stream(image, job.prompt, system=job.system, **job.options):
                if last.text:
                    pieces.append(last.text)
                    on_piece(last.text)
        except UnsupportedOption as e:  # e.g. --max-image-tokens with a SmolVLM model
            raise Failure(2, str(e)) from None
        return Result("".join(pieces), self.captioner.model_id, last.prompt_tokens if last else 0,
                      last.generation_tokens if last else 0, time.perf_counter() - tic, image)


class ServiceEngine:
    """Hands jobs to the menubar app's service, which already holds a model."""

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

    def run(self, source: Source, job: Job, on_piece: OnPiece, need_image: bool = False) -> Result:
        try:
            fields = client.image_fields(source.data, source.path)
        except FileNotFoundError:
            raise Failure(3, f"{source.label}: no such file") from None
        except IsADirectoryError:
            raise Failure(3, f"{source.label} is a directory, not an image") from None
        except OSError as e:
            raise Failure(3, f"{source.label}: cannot read ({e.strerror or e})") from None
        if fields.get("image_b64") == "":
            raise Failure(3, f"{source.label} is empty (0 bytes)")
        image = read_image(source) if need_image else None
        request = {**fields, "prompt": job.prompt, "system": job.system, **job.options}
        tic, pieces = time.perf_counter(), []

        def piece(text: str) -> None:
            pieces.append(text)
            on_piece(text)

        try:
            done = client.caption(request, piece)
        except client.ServiceError as e:
            raise Failure(e.code, tidy(e.message, source.label)) from None
        # "done" carries the whole text; a service that only streamed still counts.
        text = str(done.get("text") or "") or "".join(pieces)
        return Result(text, str(done.get("model") or self.model),
                      int(done.get("prompt_tokens") or 0), int(done.get("generation_tokens") or 0),
                      float(done.get("seconds") or time.perf_counter() - tic), image)
