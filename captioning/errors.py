"""Exit codes (the CLI's, also carried in the service's error replies) and the
one failure type every layer raises for a job it cannot do."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # unexpected errors, an unwritable --jsonl, a --draw that cannot be written, a broken pipe
    USAGE = 2  # unknown flag, bad value, nothing to caption, an option the model's family does not take
    IMAGE = 3  # unreadable, not an image, empty, too large; no image on the clipboard
    MODEL = 4  # the model cannot be loaded (or the service lost it)
    CAPTURE = 5  # clipboard or screen capture failed or is not permitted
    INTERRUPTED = 130  # Ctrl-C


class Failure(Exception):
    """One job failed; `code` is the Exit code, `message` one line for the user."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = int(code), message


def classify(e: BaseException) -> Failure:
    """An exception raised while generating → the Failure the user is shown."""
    from mlx_vlm_port.image import ImageError
    from mlx_vlm_port.options import UnsupportedOption

    if isinstance(e, Failure):
        return e
    if isinstance(e, ImageError):
        return Failure(Exit.IMAGE, str(e))
    if isinstance(e, UnsupportedOption):  # e.g. --max-image-tokens with a SmolVLM model
        return Failure(Exit.USAGE, str(e))
    if isinstance(e, (ValueError, TypeError)):  # the processor rejecting the options
        return Failure(Exit.USAGE, f"bad request: {e}")
    return Failure(Exit.MODEL, f"generation failed ({type(e).__name__}: {e})")
