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
EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how the stored pixels are rotated or mirrored


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
    """Open a path, bytes, file object, PIL image or NumPy image as an RGB PIL image.

    EXIF orientation is applied; palette, alpha, 16-bit and grayscale images
    become RGB, transparency composited onto white (as the reference does).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
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
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when there is nothing to do
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def _from_array(a: np.ndarray) -> "PIL.Image.Image":
    """A uint8 (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA array as a PIL image."""
    from PIL import Image

    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ImageError(f"a NumPy image must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); "
                         f"got {a.dtype} {a.shape}")
    return Image.fromarray(np.ascontiguousarray(a))


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
    each output i reads inputs starts[i] .. starts[i]+K-1 with weights[i] (summing to 1).

    Vectorised over the outputs with the same float operations as a loop over
    them; each output's normalising sum runs over exactly its own taps (rows are
    summed in groups of equal length), so the values are the loop's bit for bit."""
    kernel, half = FILTERS[kind]
    scale = n_in / n_out
    support, inv = (half * scale, 1.0 / scale) if scale >= 1.0 else (half, 1.0)
    k = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(n_out) + 0.5)
    starts = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    ends = np.minimum(np.trunc(center + support + 0.5), n_in).astype(np.int64)
    x = starts[:, None] + np.arange(k)
    inside = x < ends[:, None]
    ws = np.where(inside, kernel((x - center[:, None] + 0.5) * inv), 0.0)
    weights = np.zeros((n_out, k), np.float64)
    counts = ends - starts
    for n in np.unique(counts):
        rows = np.flatnonzero(counts == n)
        block = np.ascontiguousarray(ws[rows, :n])
        weights[rows, :n] = block / block.sum(axis=1, keepdims=True)
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


# The resize is a banded matrix product: the taps of a few consecutive outputs
# (a band) read one window of consecutive inputs, so each band is a small dense
# matrix and a pass is one BLAS product per band and block of rows. With the
# integer weights scaled by 2^-p, every product and every partial sum is an
# integer times 2^-p of magnitude at most 255·Σ|w|: below 2^24 float32
# represents it exactly, whatever order the BLAS sums in, so the result equals
# the integer arithmetic bit for bit. Where 255·Σ|w| reaches 2^24 (downscales
# by about 4× and more, lanczos' negative lobes), each weight is split as
# hi·2^8 + lo (0 ≤ lo < 2^8): both halves' sums stay below 2^24, one product
# computes both (the band's matrix has their rows stacked) and float64 adds
# them exactly. float64 throughout is the fallback where even that does not
# hold (windows of 258 taps and more).
BAND = 8  # rows of a band's matrix: 8 outputs, or 4 split into hi and lo
_SPLIT = 8
# OpenBLAS runs a product of m·n·k ≤ 2^18 on the calling thread (its threads
# would only spin on products this small); blocks are sized to stay below that
# and are spread over the cores by a thread pool instead.
_MNK = 1 << 18
_MIN_BLOCK = 8
_WORKERS = max(1, min(os.cpu_count() or 1, 8))  # resize threads (numpy and the BLAS release the GIL)


class _Plan:
    """One pass n_in → n_out: `weights[k]` (parts·band, span_k) maps inputs
    x0[k] … x0[k]+span_k-1 to outputs k·band … k·band+band-1 (those past n_out
    are zero rows), hi rows above lo rows when `parts` is 2; scaled by 2^-p
    (hi by 2^(8-p)) so that the sums are the outputs before rounding."""

    def __init__(self, n_in: int, n_out: int, kind: str):
        starts, wi, p = _aa_fixed_point(n_in, n_out, kind)
        wi = wi.astype(np.int64)
        hi, lo = np.floor_divide(wi, 1 << _SPLIT), np.remainder(wi, 1 << _SPLIT)
        fits = lambda w: 255 * int(np.abs(w).sum(axis=1).max()) < 2**24  # noqa: E731
        self.mode = "f32" if fits(wi) else "split" if fits(hi) and fits(lo) else "f64"
        parts = [(hi, 2.0 ** (_SPLIT - p)), (lo, 2.0**-p)] if self.mode == "split" else [(wi, 2.0**-p)]
        self.dtype = np.float64 if self.mode == "f64" else np.float32
        self.n_out, self.parts, self.band = n_out, len(parts), BAND // len(parts)
        ends = np.minimum(starts + wi.shape[1], n_in)
        first = np.arange(0, n_out, self.band)
        x0, x1 = starts[first], np.maximum.reduceat(ends, first)
        w = np.zeros((len(first), len(parts), self.band, int((x1 - x0).max())), np.float64)
        j = np.arange(n_out)
        for t in range(wi.shape[1]):  # tap t of output j: band j // band, column starts[j] + t - x0
            ok = starts + t < ends
            for i, (part, scale) in enumerate(parts):
                w[j[ok] // self.band, i, j[ok] % self.band, (starts + t - x0[j // self.band])[ok]] = part[ok, t] * scale
        self.x0, self.x1 = x0.tolist(), x1.tolist()
        self.weights = [w[k, :, :, : x1[k] - x0[k]].reshape(-1, x1[k] - x0[k]).astype(self.dtype)
                        for k in range(len(first))]
        self.span = max(x1 - x0 for x0, x1 in zip(self.x0, self.x1))

    def block(self) -> int:
        """Columns of a block whose products stay on the calling thread."""
        return max(_MIN_BLOCK, _MNK // (self.parts * self.band * self.span))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x (n_in, N) floats, any strides BLAS takes → (n_out, N) float sums
        (float64 for a split pass)."""
        n = x.shape[1]
        y = np.empty((len(self.weights), self.parts * self.band, n), self.dtype)
        for k, w in enumerate(self.weights):
            np.matmul(w, x[self.x0[k]:self.x1[k]], out=y[k])
        y = y.reshape(-1, self.parts, self.band, n)
        if self.parts == 2:
            z = y[:, 0].astype(np.float64)
            z += y[:, 1]
        else:
            z = y[:, 0]
        return z.reshape(-1, n)[: self.n_out]


_band_plan = lru_cache(maxsize=64)(_Plan)


def _round_into(out: np.ndarray, y: np.ndarray) -> None:
    """out (uint8) ← floor(y + 1/2) clipped to 0..255; y holds Σ/2^p exactly."""
    y += 0.5
    np.clip(y, 0, 255, out=y)
    out[...] = y  # in range, the cast truncates, which is floor


@lru_cache(maxsize=1)
def _pool():
    """The resize's thread pool, made on first use (importing this module starts no threads)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="resize")


def _run_blocks(fn, n: int) -> None:
    """fn(0) … fn(n-1), over the cores."""
    if n <= 1 or _WORKERS == 1:
        for i in range(n):
            fn(i)
        return
    list(_pool().map(fn, range(n)))


def _resize_widths(a: np.ndarray, widths: list, kind: str) -> list:
    """(H, W, C) uint8 → (C, w, H) uint8 (transposed: each column contiguous) for
    each w in `widths`: a block of rows becomes planar floats (C·rows, W) once,
    and each pass multiplies it."""
    h, n_in, c = a.shape
    plans = [_band_plan(n_in, n_out, kind) for n_out in widths]
    outs = [np.empty((c, n_out, h), np.uint8) for n_out in widths]
    dtype = np.float64 if any(p.mode == "f64" for p in plans) else np.float32
    rows = max(_MIN_BLOCK, min(p.block() for p in plans) // c)

    def block(i):
        x = a[i * rows:(i + 1) * rows]
        r = x.shape[0]
        planar = np.empty((c, r, n_in), dtype)
        planar[...] = x.transpose(2, 0, 1)
        planar = planar.reshape(c * r, n_in)
        for plan, out in zip(plans, outs):
            src = planar if plan.dtype == dtype else planar.astype(plan.dtype)
            y = plan.apply(src.T)  # (n_out, C·rows)
            _round_into(out[:, :, i * rows:i * rows + r], y.reshape(-1, c, r).transpose(1, 0, 2))

    _run_blocks(block, -(-h // rows))
    return outs


def _resize_columns(cols: np.ndarray, n_out: int, kind: str, out: np.ndarray) -> np.ndarray:
    """(C, W, H) uint8, columns contiguous → out (n_out, W, C), any strides: the
    row pass over blocks of columns."""
    c, w, n_in = cols.shape
    plan = _band_plan(n_in, n_out, kind)
    n = plan.block()
    target = out.transpose(2, 1, 0)  # (C, W, n_out)
    strips = [(ch, w0) for ch in range(c) for w0 in range(0, w, n)]

    def block(k):
        ch, w0 = strips[k]
        y = plan.apply(cols[ch, w0:w0 + n].astype(plan.dtype).T)  # (n_out, columns)
        _round_into(target[ch, w0:w0 + n].T, y)

    _run_blocks(block, len(strips))
    return out


def _resize_rows(slabs: np.ndarray, n_out: int, kind: str, out: np.ndarray) -> np.ndarray:
    """(S, H, N) uint8 → out (S, n_out, N), any strides: each slab's rows resized,
    in column strips of floats."""
    s, n_in, n = slabs.shape
    plan = _band_plan(n_in, n_out, kind)
    cols = plan.block()
    strips = [(i, c0) for i in range(s) for c0 in range(0, n, cols)]

    def block(k):
        i, c0 = strips[k]
        _round_into(out[i, :, c0:c0 + cols], plan.apply(slabs[i, :, c0:c0 + cols].astype(plan.dtype)))

    _run_blocks(block, len(strips))
    return out


def resize_uint8_many(image: np.ndarray, sizes, kind: str = "bilinear") -> list:
    """`resize_uint8` of one image to each (height, width) in `sizes`; the
    column passes share one read of the image."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        return [r[:, :, 0] for r in resize_uint8_many(image[:, :, None], sizes, kind)]
    h, w, c = image.shape
    widths = sorted({width for _, width in sizes if width != w})
    columns = dict(zip(widths, _resize_widths(image, widths, kind))) if widths else {}
    results = []
    for height, width in sizes:
        if width == w:
            if height == h:
                results.append(image)
                continue
            out = np.empty((height, w, c), np.uint8)
            _resize_rows(image.reshape(1, h, w * c), height, kind, out.reshape(1, height, w * c))
        else:
            out = np.empty((height, width, c), np.uint8)
            if height == h:
                out[...] = columns[width].transpose(2, 1, 0)
            else:
                _resize_columns(columns[width], height, kind, out)
        results.append(out)
    return results


def resize_uint8(image: np.ndarray, height: int, width: int, kind: str = "bilinear") -> np.ndarray:
    """Antialiased resize of an (H, W, C) or (H, W) uint8 array, bit-exact with
    torchvision's uint8 kernel (`kind` "bilinear" or "lanczos"): rows first, then
    columns, each pass rounded to uint8. The input is read once, in blocks of
    rows; no whole-image copy wider than uint8 is made."""
    return resize_uint8_many(image, [(height, width)], kind)[0]


@lru_cache(maxsize=16)
def _normalize_table(mean: tuple, std: tuple, rescale_factor: float, channels: int) -> np.ndarray:
    """(256, channels) float32: every uint8 value normalised, by the same float32
    operations as the direct formula (so the values are identical)."""
    mean = np.asarray(mean, np.float32) / np.float32(rescale_factor)
    std = np.asarray(std, np.float32) / np.float32(rescale_factor)
    values = np.broadcast_to(np.arange(256, dtype=np.float32)[:, None], (256, channels))
    return np.ascontiguousarray((values - mean) / std)


def normalize_uint8(image: np.ndarray, mean, std, rescale_factor: float) -> np.ndarray:
    """(u8 · rescale − mean) / std in float32, computed as the reference does:
    (u8 − mean/rescale) / (std/rescale); looked up from a 256-entry table."""
    image = np.asarray(image)
    shapes = {np.shape(mean), np.shape(std)} - {(), (1,), (image.shape[-1],)}
    if image.dtype != np.uint8 or image.ndim < 1 or shapes:  # other broadcasts: the formula itself
        mean = np.asarray(mean, np.float32) / np.float32(rescale_factor)
        std = np.asarray(std, np.float32) / np.float32(rescale_factor)
        return (image.astype(np.float32) - mean) / std
    c = image.shape[-1]
    table = _normalize_table(tuple(np.ravel(mean).tolist()), tuple(np.ravel(std).tolist()),
                             float(rescale_factor), c)
    if (table == table[:, :1]).all():  # one table for every channel: a single gather
        return table[:, 0].take(image)
    return table.ravel().take(image.astype(np.intp) * c + np.arange(c))


def aa_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The dense (n_out, n_in) float matrix of the same interpolation, used to
    resize the vision position-embedding grid."""
    starts, w = _aa_taps(n_in, n_out)
    m = np.zeros((n_out, n_in + w.shape[1]), np.float64)
    for i, x0 in enumerate(starts):
        m[i, x0 : x0 + w.shape[1]] = w[i]
    return m[:, :n_in]
