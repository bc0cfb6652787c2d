"""LFM2-VL: SigLIP2 vision tower → pixel unshuffle + MLP projector → LFM2.

Module attribute names follow the mlx-vlm layout (`vision_tower.*`,
`multi_modal_projector.*`, `language_model.model.*`), so checkpoints we save
load in mlx-vlm too; `sanitize` maps every other published layout onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from ..config import known_fields
from . import lfm2, siglip2
from .common import drop_tied_head, merge_image_features, pixel_unshuffle


@dataclass
class ModelConfig:
    vision_config: siglip2.VisionConfig = field(default_factory=siglip2.VisionConfig)
    text_config: lfm2.TextConfig = field(default_factory=lfm2.TextConfig)
    image_token_id: int = 396
    downsample_factor: int = 2
    projector_hidden_size: int = 2560
    projector_bias: bool = True
    projector_use_layernorm: bool = True
    model_type: str = "lfm2_vl"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Read config.json, absorbing the quirks of published checkpoints."""
        d = dict(d)
        model_type = str(d.get("model_type", "lfm2_vl")).replace("-", "_")
        if model_type != "lfm2_vl":
            raise ValueError(f"model_type {d.get('model_type')!r} is not an LFM2-VL checkpoint")
        d["model_type"] = model_type
        if "image_token_id" not in d and "image_token_index" in d:
            d["image_token_id"] = d["image_token_index"]
        text = dict(d.get("text_config") or {})
        # The top-level tie flag governs the whole model (absent or null means tied).
        tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings", d.get("tie_embedding")))
        text["tie_word_embeddings"] = tie is not False
        fields = known_fields(cls, d)
        fields.update(vision_config=siglip2.VisionConfig.from_dict(d.get("vision_config") or {}),
                      text_config=lfm2.TextConfig.from_dict(text))
        return cls(**fields)


class Projector(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.factor = c.downsample_factor
        in_dim = c.vision_config.hidden_size * self.factor**2
        if c.projector_use_layernorm:
            self.layer_norm = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, c.projector_hidden_size, bias=c.projector_bias)
        self.linear_2 = nn.Linear(c.projector_hidden_size, c.text_config.hidden_size, bias=c.projector_bias)

    def __call__(self, features: mx.array, shape: tuple[int, int]) -> mx.array:
        """One view's (h·w, C) encoder output → (h/f · w/f, text hidden)."""
        x = pixel_unshuffle(features.reshape(1, *shape, -1), self.factor)
        x = x.reshape(-1, x.shape[-1])  # (h/f · w/f, C·f²)
        if "layer_norm" in self:
            x = self.layer_norm(x)
        return self.linear_2(nn.gelu(self.linear_1(x)))


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vision_tower = siglip2.VisionModel(config.vision_config)
        self.multi_modal_projector = Projector(config)
        self.language_model = lfm2.LanguageModel(config.text_config)

    def get_image_features(self, pixel_values: mx.array, spatial_shapes: mx.array,
                           pixel_attention_mask: mx.array | None = None) -> mx.array:
        """All views → (image tokens, text hidden), in the order of `<image>` tokens."""
        features = self.vision_tower(pixel_values, spatial_shapes, pixel_attention_mask)
        shapes = spatial_shapes.tolist()  # host-side: each view's grid
        return mx.concatenate([self.multi_modal_projector(f, tuple(s)) for f, s in zip(features, shapes)])

    def get_input_embeddings(self, input_ids: mx.array, pixel_values: mx.array | None = None,
                             spatial_shapes: mx.array | None = None,
                             pixel_attention_mask: mx.array | None = None,
                             image_features: mx.array | None = None) -> mx.array:
        """Token embeddings (1, L, D) with image features written over the `<image>` tokens."""
        embeds = self.language_model.embed(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.get_image_features(pixel_values, spatial_shapes, pixel_attention_mask)
        return merge_image_features(embeds, input_ids, self.config.image_token_id, image_features)

    def __call__(self, input_ids: mx.array, pixel_values: mx.array | None = None,
                 pixel_attention_mask: mx.array | None = None, spatial_shapes: mx.array | None = None,
                 cache: list | None = None) -> mx.array:
        """input_ids (1, L) [+ images] → logits (1, L, vocab)."""
        embeds = self.get_input_embeddings(input_ids, pixel_values, spatial_shapes, pixel_attention_mask)
        return self.language_model(embeds, cache)

    def sanitize(self, weights: dict) -> dict:
        """Map any published layout onto ours: HF (`model.vision_tower.vision_model.*`,
        `model.language_model.*`, top-level `lm_head`), mlx-vlm, and torch conv kernels."""
        out = {}
        for k, v in weights.items():
            if k.startswith("model.language_model."):
                k = "language_model.model." + k[len("model.language_model."):]
            elif k.startswith("lm_head."):
                k = "language_model." + k
            elif k.startswith("model."):
                k = k[len("model."):]
            if k.startswith("vision_tower.vision_model."):
                k = "vision_tower." + k[len("vision_tower.vision_model."):]
            if k.endswith(".conv.conv.weight") and v.ndim == 3 and v.shape[1] == 1 and v.shape[2] > 1:
                v = v.transpose(0, 2, 1)  # torch (D, 1, K) -> mlx (D, K, 1)
            out[k] = v
        drop_tied_head(out, self.config.text_config.tie_word_embeddings)
        return siglip2.VisionModel.sanitize(out)
