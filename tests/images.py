"""Deterministic synthetic test images (numpy + PIL only).

`synthetic_image(width, height, seed, mode="RGB")` returns a PIL image with
structure (gradients, stripes, rectangles, discs and pixel noise), so that
resizing/tiling bugs change the pixels a model sees.

Everything is computed with integer numpy arithmetic (a uint32 hash for the
"random" parts, no floating point, no PIL drawing or conversion), so the bytes
are identical across numpy / Pillow versions and platforms.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["synthetic_image", "synthetic_array"]

_M32 = np.uint64(0xFFFFFFFF)


def _hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash, vectorised; input/output uint64 holding 32-bit values."""
    x = x.astype(np.uint64) & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _M32
    x ^= x >> np.uint64(16)
    return x


def _params(seed: int, n: int) -> list[int]:
    """n deterministic 32-bit integers from a seed."""
    base = (int(seed) * 0x9E3779B1 + 0x6A09E667) & 0xFFFFFFFF
    idx = (np.arange(n, dtype=np.uint64) + np.uint64(base)) & _M32
    return [int(v) for v in _hash32(_hash32(idx) ^ np.uint64(base))]


def synthetic_array(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB array; see `synthetic_image`."""
    w, h = int(width), int(height)
    if w < 1 or h < 1:
        raise ValueError("width and height must be >= 1")
    p = _params(seed, 64)
    y = np.arange(h, dtype=np.int64)[:, None]
    x = np.arange(w, dtype=np.int64)[None, :]

    # base: three different linear gradients, direction chosen by the seed
    wd, hd = max(w - 1, 1), max(h - 1, 1)
    gx = (x * 255) // wd  # 0..255 along x
    gy = (y * 255) // hd  # 0..255 along y
    gd = ((x * hd + y * wd) * 255) // (2 * wd * hd)  # diagonal
    chans = [gx + 0 * y, gy + 0 * x, gd]
    order = p[0] % 6
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][order]
    img = np.stack([chans[perms[0]], chans[perms[1]], 255 - chans[perms[2]]], axis=-1)

    # stripes: period scaled to the image so they survive resizing
    period = max(2, max(w, h) // (4 + p[1] % 9))
    stripe = ((x + y * (1 + p[2] % 3)) // period) % 2
    img = img + (stripe[..., None] * np.array([40, -30, 25], dtype=np.int64))

    # a checkerboard corner region with a fine pattern (aliasing shows here)
    cell = max(1, min(w, h) // (8 + p[3] % 8))
    checker = ((x // cell + y // cell) % 2).astype(np.int64)
    region = (x < (w * (1 + p[4] % 3)) // 5) & (y < (h * (1 + p[5] % 3)) // 5)
    img = np.where(region[..., None], img // 2 + checker[..., None] * 120, img)

    # rectangles and discs with seeded colours
    for k in range(4):
        q = p[8 + 8 * k : 16 + 8 * k]
        color = np.array([q[0] % 256, q[1] % 256, q[2] % 256], dtype=np.int64)
        cx, cy = q[3] % w, q[4] % h
        rw = 1 + q[5] % max(1, w // 3)
        rh = 1 + q[6] % max(1, h // 3)
        if k % 2 == 0:
            m = (np.abs(x - cx) <= rw) & (np.abs(y - cy) <= rh)
        else:
            r = max(1, min(rw, rh))
            m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        img = np.where(m[..., None], (img + 3 * color) // 4, img)

    # per-pixel noise in [-12, 12]
    yy = np.broadcast_to(y, (h, w)).astype(np.uint64)
    xx = np.broadcast_to(x, (h, w)).astype(np.uint64)
    key = (yy * np.uint64(0x1F123BB5) + xx * np.uint64(0x5F356495) + np.uint64(p[40])) & _M32
    noise = []
    for c in range(3):
        hv = _hash32(key ^ np.uint64((p[41 + c]) & 0xFFFFFFFF))
        noise.append((hv % np.uint64(25)).astype(np.int64) - 12)
    img = img + np.stack(noise, axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _palette() -> list[int]:
    """A 6x6x6 colour cube plus a 40-level grey ramp (256 entries)."""
    levels = [0, 51, 102, 153, 204, 255]
    pal = []
    for r in levels:
        for g in levels:
            for b in levels:
                pal += [r, g, b]
    for i in range(40):
        v = (i * 255) // 39
        pal += [v, v, v]
    return pal


def synthetic_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Deterministic structured image of the given size and mode.

    mode: "RGB", "L" (integer luma of the RGB image), "RGBA" (RGB plus an alpha
    channel with fully transparent, fully opaque and graded regions) or "P"
    (palette image: RGB quantised to a 6x6x6 colour cube, no transparency).
    """
    rgb = synthetic_array(width, height, seed)
    if mode == "RGB":
        return Image.fromarray(rgb)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    if mode == "L":
        lum = ((r * 299 + g * 587 + b * 114 + 500) // 1000).astype(np.uint8)
        return Image.fromarray(lum)
    if mode == "RGBA":
        h, w = rgb.shape[:2]
        y = np.arange(h, dtype=np.int64)[:, None]
        x = np.arange(w, dtype=np.int64)[None, :]
        p = _params(seed + 7919, 4)
        alpha = ((x * 255) // max(w - 1, 1) + 0 * y)  # horizontal ramp
        band = max(1, h // 4)
        alpha = np.where((y // band) % 4 == 1, 255, alpha)  # opaque band
        alpha = np.where((y // band) % 4 == 3, 0, alpha)  # transparent band
        alpha = np.where(((x + y + p[0] % 7) % 11) == 0, 128, alpha)  # sprinkle
        rgba = np.concatenate([rgb, np.clip(alpha, 0, 255).astype(np.uint8)[..., None]], axis=-1)
        return Image.fromarray(rgba)
    if mode == "P":
        idx = (r * 6 // 256) * 36 + (g * 6 // 256) * 6 + (b * 6 // 256)
        # reinterpret the index bytes as a palette image (no colour conversion)
        im = Image.frombytes("P", (rgb.shape[1], rgb.shape[0]), idx.astype(np.uint8).tobytes())
        im.putpalette(_palette(), rawmode="RGB")
        return im
    raise ValueError(f"unsupported mode {mode!r} (use RGB, L, RGBA or P)")
