"""LFM2 hybrid language model: gated short-convolution and GQA attention layers."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..config import known_fields
from .cache import KVCache, causal_mask
from .common import per_prompt


@dataclass
class TextConfig:
    vocab_size: int = 65536
    hidden_size: int = 1024
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    intermediate_size: int = 6656
    norm_eps: float = 1e-5
    conv_L_cache: int = 3
    conv_bias: bool = False
    block_multiple_of: int = 256
    block_ffn_dim_multiplier: float | None = 1.0
    block_auto_adjust_ff_dim: bool = True
    layer_types: list | None = None
    rope_theta: float = 1_000_000.0
    head_dim: int | None = None
    tie_word_embeddings: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        """Read a text config, absorbing the spellings seen in published checkpoints."""
        d = dict(d)
        d.setdefault("hidden_size", d.get("block_dim"))  # some configs give only block_dim
        if "block_ff_dim" in d:
            d["intermediate_size"] = d["block_ff_dim"]
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        d.setdefault("rope_theta", rope.get("rope_theta"))
        if d.get("tie_word_embeddings") is None:
            d["tie_word_embeddings"] = d.get("tie_embedding", True) is not False
        if d.get("layer_types") is None:
            n = d.get("num_hidden_layers", cls.num_hidden_layers)
            attn = d.get("full_attn_idxs")
            attn = range(n) if attn is None else attn
            d["layer_types"] = ["full_attention" if i in attn else "conv" for i in range(n)]
        c = cls(**known_fields(cls, d))
        c.block_ffn_dim_multiplier = d.get("block_ffn_dim_multiplier", 1.0)  # None is meaningful
        return c

    @property
    def ff_dim(self) -> int:
        """The feed-forward width, by the reference's `block_auto_adjust_ff_dim` rule."""
        ff = self.intermediate_size
        if self.block_auto_adjust_ff_dim:
            ff = int(2 * ff / 3)
            if self.block_ffn_dim_multiplier is not None:
                ff = int(self.block_ffn_dim_multiplier * ff)
                m = self.block_multiple_of
                ff = m * ((ff + m - 1) // m)
        return ff


class ConvCache:
    """The last L_cache−1 inputs of one short-conv layer."""

    def __init__(self):
        self.state = None
        self.offset = 0

    def snapshot(self):
        return self.state, self.offset

    def restore(self, snapshot) -> None:
        self.state, self.offset = snapshot


class Attention(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.n_heads, self.n_kv = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.rope_theta = c.rope_theta
        d, hd = c.hidden_size, self.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.out_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        self.q_layernorm = nn.RMSNorm(hd, eps=c.norm_eps)
        self.k_layernorm = nn.RMSNorm(hd, eps=c.norm_eps)

    def __call__(self, x: mx.array, cache: KVCache | None, mask: mx.array | None = None) -> mx.array:
        return self.out_proj(self.mix(self.q_proj(x), self.k_proj(x), self.v_proj(x), cache, mask))

    def packed(self, x: mx.array, lengths: list[int], caches: list) -> mx.array:
        """Several prompts' rows packed along L, each attending only to itself and its own cache."""
        return self.out_proj(per_prompt(self.mix, (self.q_proj(x), self.k_proj(x), self.v_proj(x)), lengths, caches))

    def mix(self, q: mx.array, k: mx.array, v: mx.array, cache: KVCache | None,
            mask: mx.array | None = None) -> mx.array:
        """Projected q, k, v (B, L, ·) → the attention's output (B, L, heads·hd) before out_proj."""
        B, L, _ = q.shape
        offset = cache.offset if cache is not None else 0  # a batch cache gives one offset per row
        # (B, L, heads·hd) -> (B, heads, L, hd), per-head RMSNorm before RoPE
        q = self.q_layernorm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_layernorm(k.reshape(B, L, self.n_kv, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv, -1).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        mask = causal_mask(L, offset) if mask is None else mask
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(B, L, -1)


class ShortConv(nn.Module):
    """in_proj → (B, C, x); y = C · causal_depthwise_conv(B · x); out_proj."""

    def __init__(self, c: TextConfig):
        super().__init__()
        d, self.kernel = c.hidden_size, c.conv_L_cache
        # Only the weight (D, K, 1) is used; keeping nn.Conv1d keeps the checkpoint's names.
        self.conv = nn.Conv1d(d, d, self.kernel, groups=d, bias=c.conv_bias)
        self.in_proj = nn.Linear(d, 3 * d, bias=c.conv_bias)
        self.out_proj = nn.Linear(d, d, bias=c.conv_bias)

    def __call__(self, x: mx.array, cache: ConvCache | None) -> mx.array:
        return self.out_proj(self.mix(self.in_proj(x), cache))

    def packed(self, x: mx.array, lengths: list[int], caches: list) -> mx.array:
        """Several prompts' rows packed along L, each convolved only with itself and its own state."""
        return self.out_proj(per_prompt(self.mix, (self.in_proj(x),), lengths, caches))

    def mix(self, bch: mx.array, cache: ConvCache | None) -> mx.array:
        """in_proj's output (B, L, 3·D) → the gated convolution (B, L, D) before out_proj."""
        B, L, D = bch.shape[0], bch.shape[1], bch.shape[2] // 3
        b, c, h = mx.split(bch, 3, axis=-1)
        bx = b * h
        state = cache.state if cache is not None and cache.state is not None else \
            mx.zeros((B, self.kernel - 1, D), bx.dtype)
        padded = mx.concatenate([state, bx], axis=1)  # (B, K-1+L, D)
        w = self.conv.weight[:, :, 0]  # (D, K)
        y = sum(padded[:, k: k + L] * w[:, k] for k in range(self.kernel))
        if "bias" in self.conv:
            y = y + self.conv.bias
        if cache is not None:
            cache.state = padded[:, -(self.kernel - 1):]
            cache.offset += L
        return c * y


class MLP(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.w1 = nn.Linear(c.hidden_size, c.ff_dim, bias=False)
        self.w3 = nn.Linear(c.hidden_size, c.ff_dim, bias=False)
        self.w2 = nn.Linear(c.ff_dim, c.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: TextConfig, layer_type: str):
        super().__init__()
        self.is_attention = layer_type != "conv"
        if self.is_attention:
            self.self_attn = Attention(c)
        else:
            self.conv = ShortConv(c)
        self.feed_forward = MLP(c)
        self.operator_norm = nn.RMSNorm(c.hidden_size, eps=c.norm_eps)
        self.ffn_norm = nn.RMSNorm(c.hidden_size, eps=c.norm_eps)

    def __call__(self, x: mx.array, cache, mask: mx.array | None = None) -> mx.array:
        if self.is_attention:
            x = x + self.self_attn(self.operator_norm(x), cache, mask)
        else:
            x = x + self.conv(self.operator_norm(x), cache)
        return x + self.feed_forward(self.ffn_norm(x))

    def packed(self, x: mx.array, lengths: list[int], caches: list) -> mx.array:
        mixer = self.self_attn if self.is_attention else self.conv
        x = x + mixer.packed(self.operator_norm(x), lengths, caches)
        return x + self.feed_forward(self.ffn_norm(x))


class LFM2Model(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = [DecoderLayer(c, t) for t in c.layer_types]
        self.embedding_norm = nn.RMSNorm(c.hidden_size, eps=c.norm_eps)

    def __call__(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        h = embeddings
        for i, layer in enumerate(self.layers):
            h = layer(h, cache[i] if cache is not None else None, mask)
        return self.embedding_norm(h)

    def packed(self, embeddings: mx.array, lengths: list[int], caches: list[list]) -> mx.array:
        h = embeddings
        for i, layer in enumerate(self.layers):
            h = layer.packed(h, lengths, [c[i] for c in caches])
        return self.embedding_norm(h)


class LanguageModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = LFM2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def make_cache(self) -> list:
        return [KVCache() if layer.is_attention else ConvCache() for layer in self.model.layers]

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.model.embed_tokens(input_ids)

    def hidden(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        """embeddings (B, L, D) → final hidden states (B, L, D), filling `cache`; `mask`
        (attention layers' keys to see) defaults to causal."""
        return self.model(embeddings, cache, mask)

    def packed_hidden(self, embeddings: mx.array, lengths: list[int], caches: list[list]) -> mx.array:
        """Several prompts' embeddings packed along L (1, ΣL, D), prompt i's `lengths[i]`
        rows with its own layer caches `caches[i]` → final hidden states (1, ΣL, D).
        As `hidden` on each prompt alone, but every row-wise product (projections,
        MLPs) runs on all rows at once: larger matrix products use the CPU better."""
        return self.model.packed(embeddings, lengths, caches)

    def head(self, h: mx.array) -> mx.array:
        if "lm_head" in self:
            return self.lm_head(h)
        return self.model.embed_tokens.as_linear(h)

    def __call__(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        """embeddings (B, L, D) → logits (B, L, vocab)."""
        return self.head(self.hidden(embeddings, cache, mask))
