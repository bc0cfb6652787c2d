"""SigLIP2 NaFlex vision encoder (the vision tower of LFM2-VL).

Each view arrives as up to P patch rows, of which the first h·w are real.
The reference pads every view to P and masks the padding out of attention;
we drop the padding instead and batch views of equal length, which gives the
same numbers (a masked key contributes exactly 0) for less work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn

from ..config import known_fields
from ..image import aa_bilinear_matrix

MAX_VIEWS_PER_BATCH = 4  # bounds the attention scores' memory (views × heads × n²)


@dataclass
class VisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    patch_size: int = 16
    num_patches: int = 256
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        return cls(**known_fields(cls, d))


class Attention(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        d = c.hidden_size
        self.num_heads = c.num_attention_heads
        self.scale = (d // self.num_heads) ** -0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, D = x.shape
        # (B, L, D) -> (B, heads, L, head_dim)
        q, k, v = (p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu_approx(self.fc1(x)))  # gelu_pytorch_tanh


class EncoderLayer(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = Attention(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.layers = [EncoderLayer(c) for _ in range(c.num_hidden_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


@lru_cache(maxsize=64)
def _resize_matrices(grid: int, h: int, w: int) -> tuple[mx.array, mx.array]:
    return (mx.array(aa_bilinear_matrix(grid, h), dtype=mx.float32),
            mx.array(aa_bilinear_matrix(grid, w), dtype=mx.float32))


class VisionEmbeddings(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.grid = int(c.num_patches**0.5)
        self.patch_embedding = nn.Linear(c.num_channels * c.patch_size**2, c.hidden_size)
        self.position_embedding = nn.Embedding(c.num_patches, c.hidden_size)

    def positions(self, h: int, w: int) -> mx.array:
        """The learned grid resized to h×w (bilinear, antialiased) → (h·w, D)."""
        mh, mw = _resize_matrices(self.grid, h, w)
        table = self.position_embedding.weight  # never quantized: it is interpolated
        g = table.astype(mx.float32).reshape(self.grid, self.grid, -1)  # (gh, gw, D)
        out = mx.einsum("hi,ijd,wj->hwd", mh, g, mw)
        return out.reshape(h * w, -1).astype(table.dtype)

    def __call__(self, patches: mx.array, shape: tuple[int, int]) -> mx.array:
        """patches (B, h·w, p·p·C) of views sharing the h×w shape → (B, h·w, D)."""
        return self.patch_embedding(patches) + self.positions(*shape)


class VisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, pixel_values: mx.array, spatial_shapes: mx.array,
                 pixel_attention_mask: mx.array | None = None) -> list[mx.array]:
        """pixel_values (V, P, p·p·C), spatial_shapes (V, 2) → one (h·w, D) array per view."""
        shapes = [tuple(s) for s in spatial_shapes.tolist()]  # host-side: they pick the batches
        if pixel_attention_mask is not None:
            lengths = pixel_attention_mask.sum(axis=1).tolist()
            bad = [i for i, ((h, w), n) in enumerate(zip(shapes, lengths)) if h * w != n]
            if bad:
                raise ValueError(f"pixel_attention_mask disagrees with spatial_shapes for views {bad}")
        dtype = self.post_layernorm.weight.dtype  # the compute dtype (weights may be quantized)
        outputs: list = [None] * len(shapes)
        for shape in dict.fromkeys(shapes):
            views = [i for i, s in enumerate(shapes) if s == shape]
            for start in range(0, len(views), MAX_VIEWS_PER_BATCH):
                batch = views[start:start + MAX_VIEWS_PER_BATCH]
                n = shape[0] * shape[1]
                x = pixel_values[mx.array(batch), :n].astype(dtype)
                x = self.post_layernorm(self.encoder(self.embeddings(x, shape)))
                for j, i in enumerate(batch):
                    outputs[i] = x[j]
        return outputs

    @staticmethod
    def sanitize(weights: dict) -> dict:
        return {k: v for k, v in weights.items() if "position_ids" not in k}
