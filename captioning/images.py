"""An input's bytes or file → one decoded RGB image, or Failure(IMAGE) worded for the user."""

from __future__ import annotations

import re

from .errors import Exit, Failure


def tidy(message: str, name: str) -> str:
    """An image error as the user should read it: named after their input, not
    "image data", "the image" (the service's name for the bytes it was sent) or a
    BytesIO repr (PIL's "cannot identify" wording says little)."""
    message = re.sub(r"^(?:the image data|image data|the image)\b", lambda _: name, message)
    message = re.sub(r"\(cannot identify image file .*\)$", "(unknown or unsupported format)", message)
    return message if name in message else f"{name}: {message}"


def read_image(label: str, *, path: str | None = None, data: bytes | None = None):
    """The image at `path` or in `data` as an RGB PIL image, or Failure(IMAGE) saying
    what is wrong with it (named `label`)."""
    import warnings

    from PIL import Image

    from mlx_vlm_port.image import ImageError, load_image

    if path is not None:  # the OS's own word for a file we cannot read (PIL's is vaguer)
        try:
            with open(path, "rb"):
                pass
        except IsADirectoryError:
            pass  # load_image words this one
        except FileNotFoundError:
            raise Failure(Exit.IMAGE, f"{label}: no such file") from None
        except OSError as e:
            raise Failure(Exit.IMAGE, f"{label}: cannot read ({e.strerror or e})") from None
    with warnings.catch_warnings():
        # PIL only *warns* between its pixel limit and twice that; refuse those too
        # rather than decode a few GB.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return load_image(path if path is not None else data)
        except Image.DecompressionBombWarning as e:
            raise Failure(Exit.IMAGE, f"{label} is too large to decode safely ({e})") from None
        except ImageError as e:
            raise Failure(Exit.IMAGE, tidy(str(e), label)) from None
        except MemoryError:
            raise Failure(Exit.IMAGE, f"{label} is too large to decode") from None
