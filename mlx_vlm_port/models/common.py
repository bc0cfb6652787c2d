"""What every vision-language model here shares: folding neighbouring patches
into channels, writing image features over the `<image>` tokens, and dropping
a stored head that the config ties to the embedding."""

from __future__ import annotations

import mlx.core as mx


def pixel_unshuffle(x: mx.array, f: int) -> mx.array:
    """(B, h, w, C) → (B, h/f, w/f, C·f²), channel order as the references' reshape/permute
    (LFM2-VL's pixel unshuffle and Idefics3's pixel shuffle are the same operation)."""
    B, h, w, c = x.shape
    x = x.reshape(B, h, w // f, c * f)  # merge f neighbours along a row
    x = x.transpose(0, 2, 1, 3).reshape(B, w // f, h // f, c * f * f)  # then f along a column
    return x.transpose(0, 2, 1, 3)


def merge_image_features(embeds: mx.array, input_ids: mx.array, image_token_id: int,
                         image_features: mx.array | None) -> mx.array:
    """embeds (1, L, D) with row i of image_features (N, D) written at the i-th image token.
    All in MLX (no read back to the host): the caller checks that N equals the count."""
    if image_features is None:
        return embeds
    if input_ids.shape[0] != 1:
        raise ValueError("images are supported for a batch of one prompt")
    is_image = input_ids == image_token_id  # (1, L)
    row = mx.maximum(mx.cumsum(is_image.astype(mx.int32), axis=1) - 1, 0)  # (1, L): the feature for each token
    return mx.where(is_image[..., None], image_features.astype(embeds.dtype)[row], embeds)


def drop_tied_head(weights: dict, tied: bool) -> dict:
    """Without `language_model.lm_head.*` when the head is tied (some exports store a copy)."""
    if tied:
        for suffix in ("weight", "scales", "biases"):
            weights.pop(f"language_model.lm_head.{suffix}", None)
    return weights


def per_prompt(fn, arrays: tuple, lengths: list[int], caches: list) -> mx.array:
    """fn(*rows, cache) on each prompt's rows of `arrays` (1, ΣL, ·), packed prompt after
    prompt (`lengths`), with that prompt's cache; the results joined along L again."""
    parts, start = [], 0
    for n, cache in zip(lengths, caches, strict=True):
        parts.append(fn(*(a[:, start:start + n] for a in arrays), cache))
        start += n
    return mx.concatenate(parts, axis=1)
