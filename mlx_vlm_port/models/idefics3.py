"""Idefics3 (SmolVLM): SigLIP vision encoder at a fixed tile size → pixel shuffle +
one Linear (the connector) → Llama.

Module names follow mlx-vlm's layout (`vision_model.*`, `connector.*`,
`language_model.*`), so checkpoints we save load in mlx-vlm too; `sanitize`
maps the Hugging Face layout onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from ..config import known_fields
from . import llama
from .common import drop_tied_head, merge_image_features, pixel_unshuffle
from .siglip2 import MAX_VIEWS_PER_BATCH, Encoder


@dataclass
class VisionConfig:
    """Defaults are transformers' Idefics3VisionConfig defaults (config.json omits values equal to them)."""

    hidden_size: int = 1152
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        return cls(**known_fields(cls, d))


@dataclass
class ModelConfig:
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: llama.TextConfig = field(default_factory=llama.TextConfig)
    image_token_id: int = 128257
    scale_factor: int = 2
    model_type: str = "idefics3"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if str(d.get("model_type")) != "idefics3":
            raise ValueError(f"model_type {d.get('model_type')!r} is not an Idefics3 checkpoint")
        if "image_token_id" not in d and "image_token_index" in d:
            d["image_token_id"] = d["image_token_index"]
        text = dict(d.get("text_config") or {})
        # The top-level flag governs the head (transformers' default for Idefics3: untied).
        tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings"))
        text["tie_word_embeddings"] = bool(tie)
        fields = known_fields(cls, d)
        fields.update(vision_config=VisionConfig.from_dict(d.get("vision_config") or {}),
                      text_config=llama.TextConfig.from_dict(text))
        return cls(**fields)


def position_ids(rows: int, cols: int, side: int) -> mx.array:
    """The reference's fractional bucketing of a rows×cols patch grid onto the learned
    side×side table, float32 steps included (the identity when rows = cols = side)."""
    # the boundaries in float64 (Python floats), then rounded to float32, as the reference
    boundaries = mx.array([1 / side + i * (1 / side) for i in range(side - 1)], dtype=mx.float32)
    limit = mx.array(1.0 - 1e-6, dtype=mx.float32)

    def buckets(n: int) -> mx.array:
        frac = mx.arange(n, dtype=mx.float32) * (mx.array(1.0, mx.float32) / mx.array(n, mx.float32))
        return (boundaries <= mx.minimum(frac, limit)[:, None]).sum(axis=-1)  # searchsorted(side="right")

    return (buckets(rows)[:, None] * side + buckets(cols)[None, :]).reshape(-1)


class VisionEmbeddings(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.patch_size, self.side = c.patch_size, c.image_size // c.patch_size
        # A stride-p conv over p×p patches, applied here as one matmul; MLX layout (D, p, p, C).
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(self.side**2, c.hidden_size)

    def __call__(self, pixel_values: mx.array) -> mx.array:
        """pixel_values (B, H, W, C) → (B, H/p · W/p, D)."""
        B, H, W, C = pixel_values.shape
        p = self.patch_size
        rows, cols = H // p, W // p
        # (B, H, W, C) -> (B, rows, p, cols, p, C) -> (B, rows, cols, p, p, C) -> (B, rows·cols, p·p·C)
        x = pixel_values[:, : rows * p, : cols * p].reshape(B, rows, p, cols, p, C)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, rows * cols, -1)
        w = self.patch_embedding.weight
        x = x @ w.reshape(w.shape[0], -1).T + self.patch_embedding.bias
        return x + self.position_embedding(position_ids(rows, cols, self.side))


class VisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, pixel_values: mx.array) -> mx.array:
        """pixel_values (V, H, W, C) → (V, patches, D), at most MAX_VIEWS_PER_BATCH views at a time."""
        dtype = self.post_layernorm.weight.dtype  # the compute dtype (weights may be quantized)
        out = []
        for start in range(0, pixel_values.shape[0], MAX_VIEWS_PER_BATCH):
            x = pixel_values[start:start + MAX_VIEWS_PER_BATCH].astype(dtype)
            out.append(self.post_layernorm(self.encoder(self.embeddings(x))))
        return mx.concatenate(out)


class Projection(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        in_dim = c.vision_config.hidden_size * c.scale_factor**2
        self.proj = nn.Linear(in_dim, c.text_config.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.proj(x)


class Connector(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.scale_factor = c.scale_factor
        self.modality_projection = Projection(c)

    def __call__(self, features: mx.array) -> mx.array:
        """(V, n², D) square patch grids → (V · n²/s², text hidden)."""
        V, n2, D = features.shape
        n = int(round(n2**0.5))
        x = pixel_unshuffle(features.reshape(V, n, n, D), self.scale_factor)
        return self.modality_projection(x.reshape(-1, x.shape[-1]))


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vision_model = VisionModel(config.vision_config)
        self.connector = Connector(config)
        self.language_model = llama.LanguageModel(config.text_config)

    def get_image_features(self, pixel_values: mx.array, pixel_attention_mask: mx.array | None = None) -> mx.array:
        """All frames (V, H, W, 3) → (image tokens, text hidden), in the order of `<image>` tokens."""
        if pixel_attention_mask is not None and not pixel_attention_mask.all().item():
            # Our processor never pads a frame; padded frames would need masked attention.
            raise ValueError("padded frames (pixel_attention_mask with zeros) are not supported")
        if pixel_values.ndim == 5:  # the reference's (batch, frames, C, H, W)
            pixel_values = pixel_values.reshape(-1, *pixel_values.shape[2:]).transpose(0, 2, 3, 1)
        return self.connector(self.vision_model(pixel_values))

    def get_input_embeddings(self, input_ids: mx.array, pixel_values: mx.array | None = None,
                             pixel_attention_mask: mx.array | None = None,
                             image_features: mx.array | None = None) -> mx.array:
        """Token embeddings (1, L, D) with image features written over the `<image>` tokens."""
        embeds = self.language_model.embed(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.get_image_features(pixel_values, pixel_attention_mask)
        return merge_image_features(embeds, input_ids, self.config.image_token_id, image_features)

    def __call__(self, input_ids: mx.array, pixel_values: mx.array | None = None,
                 pixel_attention_mask: mx.array | None = None, cache: list | None = None) -> mx.array:
        """input_ids (1, L) [+ frames] → logits (1, L, vocab)."""
        return self.language_model(self.get_input_embeddings(input_ids, pixel_values, pixel_attention_mask), cache)

    def sanitize(self, weights: dict) -> dict:
        """Map the Hugging Face layout (`model.vision_model.*`, `model.connector.*`,
        `model.text_model.*`, `lm_head.*`) and torch conv kernels onto ours."""
        out = {}
        channels = self.config.vision_config.num_channels
        for k, v in weights.items():
            if k.startswith("model.text_model."):
                k = "language_model." + k[len("model.text_model."):]
            elif k.startswith("lm_head."):
                k = "language_model." + k
            elif k.startswith("model."):
                k = k[len("model."):]
            if "position_ids" in k or "rotary_emb.inv_freq" in k:
                continue
            if k == "vision_model.embeddings.patch_embedding.weight" and v.ndim == 4 and v.shape[-1] != channels:
                v = v.transpose(0, 2, 3, 1)  # torch (D, C, p, p) -> mlx (D, p, p, C)
            out[k] = v
        drop_tied_head(out, self.config.text_config.tie_word_embeddings)
        return out
