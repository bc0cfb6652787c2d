"""LFM2-VL image rules: smart resize or 512² tiles plus a thumbnail, normalised
patches, and the `<image>` expansion with its tile markers. NumPy only; numbers
equal transformers' Lfm2VlImageProcessor + Lfm2VlProcessor."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .config import known_fields
from .image import normalize_uint8, resize_uint8, resize_uint8_many
from .options import ImageOptions


@dataclass
class ImageConfig:
    """Image-processor settings; defaults are LFM2.5-VL's. Unknown keys are ignored."""

    min_image_tokens: int = 32
    max_image_tokens: int = 256
    do_image_splitting: bool = True
    tile_size: int = 512
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    max_pixels_tolerance: float = 2.0
    encoder_patch_size: int = 16
    downsample_factor: int = 2
    rescale_factor: float = 1 / 255
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        return cls(**known_fields(cls, d))


def _round_by_factor(x: float, factor: int) -> int:
    return round(x / factor) * factor  # Python's round (half to even), as the reference


def smart_resize(height: int, width: int, c: ImageConfig, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """Size (h, w), multiples of patch·downsample, whose token count lies in [min, max]."""
    f = c.encoder_patch_size * c.downsample_factor
    min_pixels, max_pixels = min_tokens * f * f, max_tokens * f * f
    h = max(f, _round_by_factor(height, f))
    w = max(f, _round_by_factor(width, f))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / f) * f
        w = math.ceil(width * beta / f) * f
    return h, w


def _is_too_large(height: int, width: int, c: ImageConfig, max_tokens: int) -> bool:
    f = c.encoder_patch_size * c.downsample_factor
    h = max(c.encoder_patch_size, _round_by_factor(height, f))
    w = max(c.encoder_patch_size, _round_by_factor(width, f))
    return h * w > max_tokens * f * f * c.max_pixels_tolerance


def grid_layout(height: int, width: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """(rows, cols) of tiles: the ratio closest to the image's, ties going to the
    larger grid when the image covers over half of it (the reference's rule)."""
    ratios = sorted(
        {(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1) for h in range(1, n + 1)
         if min_tiles <= w * h <= max_tiles},
        key=lambda r: r[0] * r[1],
    )
    aspect, best, best_diff = width / height, (1, 1), float("inf")
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * r[0] * r[1]:
            best = r
    return best[1], best[0]


class ImageProcessor:
    """One image → its placeholder text and (views, patches, …) arrays."""

    add_special_tokens = False  # the chat template already starts with <|startoftext|>

    def __init__(self, config: ImageConfig | None = None, image_token: str = "<image>"):
        self.config = config or ImageConfig()
        self.image_token = image_token

    @classmethod
    def from_settings(cls, settings: dict, model_config: dict) -> "ImageProcessor":
        return cls(ImageConfig.from_dict(settings))

    def tokens_for(self, height: int, width: int) -> int:
        """Image tokens of a view of this pixel size after the encoder and unshuffle."""
        c = self.config
        return math.ceil((height // c.encoder_patch_size) / c.downsample_factor) * math.ceil(
            (width // c.encoder_patch_size) / c.downsample_factor)

    def resolved(self, options: ImageOptions) -> ImageOptions:
        """`options` with every one left None taken from the checkpoint's settings."""
        unset = [n for n in ImageOptions.names_for("lfm2_vl") if getattr(options, n) is None]
        return dataclasses.replace(options, **{n: getattr(self.config, n) for n in unset})

    def views(self, image: np.ndarray, o: ImageOptions):
        """Resize/tile one (H, W, 3) uint8 image by resolved options. Returns its views
        (uint8 arrays), the (rows, cols) grid and the smart-resized (h, w) of the single
        view/thumbnail."""
        c = self.config
        height, width = image.shape[:2]
        min_tiles, max_tiles = o.min_tiles, o.max_tiles
        if not o.do_image_splitting:
            min_tiles = max_tiles = 1
        elif min_tiles > max_tiles:
            raise ValueError("min_tiles must be less than or equal to max_tiles")
        size = smart_resize(height, width, c, o.min_image_tokens, o.max_image_tokens)
        if self.tokens_for(*size) > o.max_image_tokens:
            # Grown to a floor at or above the budget (each side rounded up): the view would not
            # fit its own patch budget, so it is not grown. (Within the reference's own limits,
            # a floor well below the budget, this never happens.)
            size = smart_resize(height, width, c, 1, o.max_image_tokens)
        if _is_too_large(height, width, c, o.max_image_tokens) and not min_tiles == max_tiles == 1:
            rows, cols = grid_layout(height, width, min_tiles, max_tiles, c.tile_size)
            t = c.tile_size
            thumbnail = o.use_thumbnail and rows * cols != 1
            big, *thumb = resize_uint8_many(image, [(rows * t, cols * t)] + [size] * thumbnail)
            views = [big[r * t:(r + 1) * t, q * t:(q + 1) * t] for r in range(rows) for q in range(cols)]
            return views + thumb, (rows, cols), size
        return [resize_uint8(image, *size)], (1, 1), size

    def patchify(self, view: np.ndarray, max_patches: int) -> tuple[np.ndarray, int, int]:
        """Normalise one uint8 view and cut it into (max_patches, p·p·3) rows, zero-padded."""
        c, p = self.config, self.config.encoder_patch_size
        x = normalize_uint8(view, c.image_mean, c.image_std, c.rescale_factor)
        nh, nw = view.shape[0] // p, view.shape[1] // p
        # (H, W, C) -> (nh, p, nw, p, C) -> (nh, nw, p, p, C) -> (nh·nw, p·p·C)
        x = x[: nh * p, : nw * p].reshape(nh, p, nw, p, -1).transpose(0, 2, 1, 3, 4).reshape(nh * nw, -1)
        if nh * nw > max_patches:
            raise ValueError(f"a view of {nh}×{nw} patches exceeds max_num_patches={max_patches}")
        out = np.zeros((max_patches, x.shape[1]), np.float32)
        out[: nh * nw] = x
        return out, nh, nw

    def placeholder(self, grid: tuple[int, int], size: tuple[int, int], use_thumbnail: bool) -> str:
        """The text an `<image>` becomes: start, per-tile markers and tokens, thumbnail, end."""
        c, rows, cols = self.config, *grid
        parts = ["<|image_start|>"]
        if rows > 1 or cols > 1:
            per_tile = self.tokens_for(c.tile_size, c.tile_size)
            for r in range(rows):
                for q in range(cols):
                    parts += [f"<|img_row_{r + 1}_col_{q + 1}|>", self.image_token * per_tile]
            if use_thumbnail:
                parts += ["<|img_thumbnail|>", self.image_token * self.tokens_for(*size)]
        else:
            parts.append(self.image_token * self.tokens_for(*size))
        parts.append("<|image_end|>")
        return "".join(parts)

    def expand(self, image: np.ndarray, options: ImageOptions = ImageOptions()
               ) -> tuple[str, dict[str, np.ndarray]]:
        """One (H, W, 3) uint8 image → its placeholder text and pixel_values (V, P, p·p·3),
        pixel_attention_mask (V, P), spatial_shapes (V, 2); None options take the config's value."""
        c, o = self.config, self.resolved(options)
        # Every view is padded to one length, the same for all images of a prompt.
        tile_patches = (c.tile_size // c.encoder_patch_size) ** 2 if o.do_image_splitting else 0
        max_patches = max(o.max_image_tokens * c.downsample_factor**2, tile_patches)
        views, grid, size = self.views(image, o)
        pixels, masks, shapes = [], [], []
        for view in views:
            patches, nh, nw = self.patchify(view, max_patches)
            mask = np.zeros(max_patches, np.int32)
            mask[: nh * nw] = 1
            pixels.append(patches), masks.append(mask), shapes.append((nh, nw))
        arrays = dict(pixel_values=np.stack(pixels), pixel_attention_mask=np.stack(masks),
                      spatial_shapes=np.array(shapes, np.int32))
        return self.placeholder(grid, size, o.use_thumbnail), arrays
