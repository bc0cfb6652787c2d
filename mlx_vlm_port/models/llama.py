"""Llama language model (SmolLM2, the text half of SmolVLM): RMSNorm, RoPE, GQA, SwiGLU.

Module names follow mlx-vlm's idefics3 layout (`embed_tokens`, `layers`, `norm`,
`lm_head` directly on the language model), so checkpoints we save load there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..config import known_fields
from .cache import KVCache, causal_mask
from .common import per_prompt


@dataclass
class TextConfig:
    vocab_size: int = 49280
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scale: float = 1.0  # 1 / the "linear" rope_scaling factor
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        """Read a Llama text config; rope settings may sit in `rope_parameters` or `rope_scaling`."""
        d = dict(d)
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        d.setdefault("rope_theta", rope.get("rope_theta"))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind == "linear":
            d["rope_scale"] = 1.0 / float(rope["factor"])
        elif kind != "default":
            raise ValueError(f"rope type {kind!r} is not supported (only default and linear)")
        c = cls(**known_fields(cls, d))
        c.num_key_value_heads = c.num_key_value_heads or c.num_attention_heads
        c.head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
        return c


class Attention(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale = self.head_dim**-0.5
        self.rope_theta, self.rope_scale = c.rope_theta, c.rope_scale
        d, hd, bias = c.hidden_size, c.head_dim, c.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=bias)

    def rope(self, x: mx.array, offset: int) -> mx.array:
        return mx.fast.rope(x, self.head_dim, traditional=False, base=self.rope_theta, scale=self.rope_scale,
                            offset=offset)

    def __call__(self, x: mx.array, cache: KVCache | None, mask: mx.array | None = None) -> mx.array:
        return self.o_proj(self.mix(self.q_proj(x), self.k_proj(x), self.v_proj(x), cache, mask))

    def packed(self, x: mx.array, lengths: list[int], caches: list) -> mx.array:
        """Several prompts' rows packed along L, each attending only to itself and its own cache."""
        return self.o_proj(per_prompt(self.mix, (self.q_proj(x), self.k_proj(x), self.v_proj(x)), lengths, caches))

    def mix(self, q: mx.array, k: mx.array, v: mx.array, cache: KVCache | None,
            mask: mx.array | None = None) -> mx.array:
        """Projected q, k, v (B, L, ·) → the attention's output (B, L, heads·hd) before o_proj."""
        B, L, _ = q.shape
        offset = cache.offset if cache is not None else 0  # a batch cache gives one offset per row
        # (B, L, heads·hd) -> (B, heads, L, hd)
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(B, L, self.n_kv, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        mask = causal_mask(L, offset) if mask is None else mask
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(B, L, -1)


class MLP(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    def __call__(self, x: mx.array, cache: KVCache | None, mask: mx.array | None = None) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def packed(self, x: mx.array, lengths: list[int], caches: list) -> mx.array:
        x = x + self.self_attn.packed(self.input_layernorm(x), lengths, caches)
        return x + self.mlp(self.post_attention_layernorm(x))


class LanguageModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def make_cache(self) -> list:
        return [KVCache() for _ in self.layers]

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.embed_tokens(input_ids)

    def hidden(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        """embeddings (B, L, D) → final hidden states (B, L, D), filling `cache`; `mask`
        (the keys each query sees) defaults to causal."""
        h = embeddings
        for i, layer in enumerate(self.layers):
            h = layer(h, cache[i] if cache is not None else None, mask)
        return self.norm(h)

    def packed_hidden(self, embeddings: mx.array, lengths: list[int], caches: list[list]) -> mx.array:
        """Several prompts packed along L (1, ΣL, D), each with its own caches: as lfm2's."""
        h = embeddings
        for i, layer in enumerate(self.layers):
            h = layer.packed(h, lengths, [c[i] for c in caches])
        return self.norm(h)

    def head(self, h: mx.array) -> mx.array:
        if "lm_head" in self:
            return self.lm_head(h)
        return self.embed_tokens.as_linear(h)

    def __call__(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        """embeddings (B, L, D) → logits (B, L, vocab)."""
        return self.head(self.hidden(embeddings, cache, mask))
