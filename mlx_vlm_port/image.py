"""Image input: decoding to RGB uint8, and the exact resize the reference uses.

The reference processors resize the uint8 image with torchvision's antialiased
kernels (bilinear for LFM2-VL, lanczos for Idefics3). `resize_uint8` reproduces that kernel's fixed-point arithmetic
bit for bit, so our pixel values equal the reference's, not merely resemble them.
"""

from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache

import numpy as np

# Refuse images whose decoded size would be absurd (a 30000×30000 PNG header is
# 2.7 GB of RGB); PIL's own bomb guard only warns below twice its limit.
MAX_IMAGE_PIXELS = 178_956_970


class ImageError(ValueError):
    """The input is not a usable image (missing, unreadable, empty, too large)."""


def heif_registered() -> bool:
    """Whether PIL opens HEIC/HEIF (pillow-heif registers the format "HEIF" in PIL's own table)."""
    from PIL import Image

    return "HEIF" in Image.OPEN


def register_heif() -> bool:
    """Teach PIL to open HEIC/HEIF (iPhone photos, Shortcuts' "Get Latest Photos") through
    pillow-heif; True once registered. Done on the first image PIL cannot identify, so
    the ~0.1 s import is paid only by those who need it."""
    if not heif_registered():
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
    return heif_registered()


def load_image(source) -> "PIL.Image.Image":
    """Open a path, bytes, file object or PIL image as an RGB PIL image.

    EXIF orientation is applied; palette, alpha, 16-bit and grayscale images
    become RGB, transparency composited onto white (as the reference does).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("the image data is empty (0 bytes)")
            source, name = io.BytesIO(bytes(source)), "image data"
        elif isinstance(source, (str, os.PathLike)):
            name = os.fspath(source)
            if os.path.isdir(name):
                raise ImageError(f"{name} is a directory, not an image")
            if not os.path.exists(name):
                raise ImageError(f"{name}: no such file")
            if os.path.getsize(name) == 0:
                raise ImageError(f"{name} is empty (0 bytes)")
        else:
            name = getattr(source, "name", "image data")
        try:
            with warnings.catch_warnings():  # PIL's size warning becomes our error below
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                try:
                    image = Image.open(source)
                except UnidentifiedImageError:
                    if heif_registered() or not _rewind(source) or not register_heif():
                        raise
                    image = Image.open(source)  # HEIC/HEIF, now that PIL knows it
            # Refuse absurd sizes from the header, before decoding a single pixel.
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{name} is too large ({image.width}×{image.height} pixels)")
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} is too large to decode safely") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, ImageError):
                raise
            reason = "not a known image format" if isinstance(e, UnidentifiedImageError) else str(e)
            raise ImageError(f"{name} is not a readable image ({reason})") from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/APNG: caption the first frame
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def _rewind(source) -> bool:
    """Make `source` readable from its start again (a path always is)."""
    if isinstance(source, (str, os.PathLike)):
        return True
    try:
        source.seek(0)
        return True
    except (AttributeError, OSError, ValueError):
        return False


def to_rgb(image) -> "PIL.Image.Image":
    """Convert any PIL mode to RGB, compositing transparency onto white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: scale to 8 bits instead of PIL's clipping convert.
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        image = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


# filter name → (kernel, half-width of its support at scale 1)
FILTERS = {"bilinear": (_triangle, 1.0), "lanczos": (_lanczos3, 3.0)}


@lru_cache(maxsize=128)
def _aa_taps(n_in: int, n_out: int, kind: str = "bilinear"):
    """Taps of torch's antialiased `kind` pass n_in → n_out (align_corners=False):
    each output i reads inputs starts[i] .. starts[i]+K-1 with weights[i] (summing to 1)."""
    kernel, half = FILTERS[kind]
    scale = n_in / n_out
    support, inv = (half * scale, 1.0 / scale) if scale >= 1.0 else (half, 1.0)
    starts = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, int(np.ceil(support)) * 2 + 1), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        x0 = max(int(center - support + 0.5), 0)
        x1 = min(int(center + support + 0.5), n_in)
        ws = kernel((np.arange(x0, x1) - center + 0.5) * inv)
        starts[i] = x0
        weights[i, : x1 - x0] = ws / ws.sum()
    return starts, weights


@lru_cache(maxsize=128)
def _aa_fixed_point(n_in: int, n_out: int, kind: str):
    """The taps in torch's uint8 fixed point: integer weights (rounded half away
    from zero; lanczos has negative lobes) and their precision bits."""
    starts, w = _aa_taps(n_in, n_out, kind)
    precision, m = 0, w.max()
    while precision < 22 and m * 2 ** (precision + 1) < 2**15:
        precision += 1
    scaled = w * 2**precision
    return starts, np.trunc(scaled + np.copysign(0.5, scaled)).astype(np.int32), precision


def _resize_axis(a: np.ndarray, n_out: int, axis: int, kind: str) -> np.ndarray:
    n_in = a.shape[axis]
    starts, wi, p = _aa_fixed_point(n_in, n_out, kind)
    # int32 is enough: Σ pixel·weight ≤ 255·2^22 < 2^31.
    a = np.moveaxis(a, axis, 0).astype(np.int32)
    padded = np.concatenate([a, np.zeros((wi.shape[1],) + a.shape[1:], np.int32)])
    acc = np.full((n_out,) + a.shape[1:], 1 << (p - 1) if p > 0 else 0, np.int32)
    for k in range(wi.shape[1]):
        acc += padded[starts + k] * wi[:, k].reshape((-1,) + (1,) * (a.ndim - 1))
    out = np.clip(acc >> p, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_uint8(image: np.ndarray, height: int, width: int, kind: str = "bilinear") -> np.ndarray:
    """Antialiased resize of an (H, W, C) uint8 array, bit-exact with torchvision's
    uint8 kernel (`kind` "bilinear" or "lanczos"): rows first, then columns."""
    if image.shape[1] != width:
        image = _resize_axis(image, width, 1, kind)
    if image.shape[0] != height:
        image = _resize_axis(image, height, 0, kind)
    return image


def normalize_uint8(image: np.ndarray, mean, std, rescale_factor: float) -> np.ndarray:
    """(u8 · rescale − mean) / std in float32, computed as the reference does: (u8 − mean/rescale) / (std/rescale)."""
    mean = np.asarray(mean, np.float32) / np.float32(rescale_factor)
    std = np.asarray(std, np.float32) / np.float32(rescale_factor)
    return (image.astype(np.float32) - mean) / std


def aa_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The dense (n_out, n_in) float matrix of the same interpolation, used to
    resize the vision position-embedding grid."""
    starts, w = _aa_taps(n_in, n_out)
    m = np.zeros((n_out, n_in + w.shape[1]), np.float64)
    for i, x0 in enumerate(starts):
        m[i, x0 : x0 + w.shape[1]] = w[i]
    return m[:, :n_in]
