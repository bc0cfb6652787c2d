"""Idefics3 (SmolVLM) image rules: resize the longest edge to `longest_edge`, round
up to whole tiles, cut `max_image_size` tiles plus a squashed global view, and
frame each tile's tokens with `<fake_token_around_image>` and `<row_R_col_C>`.
NumPy only; numbers equal transformers' Idefics3ImageProcessor + Idefics3Processor
(torchvision backend: antialiased lanczos on uint8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import known_fields
from .image import normalize_uint8, resize_uint8
from .options import ImageOptions

MAX_IMAGE_SIZE = 4096  # the reference's absolute cap on the resized image's edges
RESAMPLE = {1: "lanczos", 2: "bilinear"}  # PIL's numbering, as in preprocessor_config.json


@dataclass
class ImageConfig:
    """Image-processor settings; defaults are transformers' class defaults (SmolVLM
    checkpoints set longest_edge 2048 / max_image_size 512 / image_seq_len 64)."""

    longest_edge: int = 4 * 364  # size["longest_edge"]: the resized image's longest edge
    max_image_size: int = 364  # max_image_size["longest_edge"]: one tile's edge
    image_seq_len: int = 169  # image tokens per tile
    do_resize: bool = True
    do_image_splitting: bool = True
    resample: int = 1
    rescale_factor: float = 1 / 255
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        d = dict(d)
        for key, field in (("size", "longest_edge"), ("max_image_size", "max_image_size")):
            if isinstance(d.get(key), dict):
                d[field] = d[key].get("longest_edge")
        c = cls(**known_fields(cls, d))
        if c.resample not in RESAMPLE:
            raise ValueError(f"resample={c.resample} is not supported (only 1: lanczos, 2: bilinear)")
        return c


def _even(x: int) -> int:
    return x + 1 if x % 2 else x


def resized_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The longest edge scaled to `longest_edge` (up or down; the other made even), then
    both capped at MAX_IMAGE_SIZE: the reference's two-step rule, int() truncations included."""
    aspect = width / height
    if width >= height:
        width, height = longest_edge, _even(int(longest_edge / aspect))
    else:
        height, width = longest_edge, _even(int(longest_edge * aspect))
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def tiled_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Both edges rounded up to whole tiles, the short one through the aspect ratio."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


class ImageProcessor:
    """One image → its placeholder text and (frames, H, W, 3) pixel values."""

    add_special_tokens = True  # the reference processor calls the tokenizer with its defaults

    def __init__(self, config: ImageConfig | None = None, image_token: str = "<image>"):
        self.config = config or ImageConfig()
        self.image_token = image_token

    @classmethod
    def from_settings(cls, settings: dict, model_config: dict) -> "ImageProcessor":
        if "image_seq_len" not in settings:  # older folders: what the model's geometry gives
            v = model_config.get("vision_config") or {}
            side = v.get("image_size", 224) // v.get("patch_size", 32)  # transformers' defaults
            settings = {**settings, "image_seq_len": side**2 // model_config.get("scale_factor", 2) ** 2}
        return cls(ImageConfig.from_dict(settings))

    def resize(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        return resize_uint8(image, height, width, RESAMPLE[self.config.resample])

    def frames(self, image: np.ndarray, longest_edge: int, do_image_splitting: bool):
        """Tiles (row-major) then the global view, each max_image_size²; and (rows, cols),
        (0, 0) when the image is a single view."""
        c, t = self.config, self.config.max_image_size
        if c.do_resize:
            image = self.resize(image, *resized_size(*image.shape[:2], longest_edge))
        if not do_image_splitting:
            return [self.resize(image, t, t)], (0, 0)
        image = self.resize(image, *tiled_size(*image.shape[:2], t))
        h, w = image.shape[:2]
        if h <= t and w <= t:
            return [image], (0, 0)
        rows, cols = h // t, w // t
        tiles = [image[r * t:(r + 1) * t, q * t:(q + 1) * t] for r in range(rows) for q in range(cols)]
        return tiles + [self.resize(image, t, t)], (rows, cols)

    def placeholder(self, rows: int, cols: int) -> str:
        fake, tokens = "<fake_token_around_image>", self.image_token * self.config.image_seq_len
        global_view = f"{fake}<global-img>{tokens}{fake}"
        if rows == cols == 0:
            return global_view
        grid = "".join("".join(f"{fake}<row_{r + 1}_col_{q + 1}>{tokens}" for q in range(cols)) + "\n"
                       for r in range(rows))
        return f"{grid}\n{global_view}"

    def expand(self, image: np.ndarray, options: ImageOptions = ImageOptions()
               ) -> tuple[str, dict[str, np.ndarray]]:
        """One (H, W, 3) uint8 image → its placeholder text and pixel_values (V, H, W, 3);
        None options take the config's value (ImageOptions checked longest_edge ≥ 1)."""
        c = self.config
        frames, (rows, cols) = self.frames(
            image, c.longest_edge if options.longest_edge is None else options.longest_edge,
            c.do_image_splitting if options.do_image_splitting is None else options.do_image_splitting)
        pixels = np.stack([normalize_uint8(f, c.image_mean, c.image_std, c.rescale_factor) for f in frames])
        return self.placeholder(rows, cols), {"pixel_values": pixels}
