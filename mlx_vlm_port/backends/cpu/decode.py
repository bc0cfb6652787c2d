"""One LFM2 decoding step (one row, float32) in numpy, on zero-copy views of the
model's weights and of its layer caches.

Run through MLX, a 450M step's ~93 one-row products each synchronise MLX's CPU
stream (`layers._numpy_matvec`): ~40 ms a step went to those evaluations, their
copies and the graph building around ~110 ms of products. Here the small
operations are numpy calls of a few microseconds, and the products that share
an input (q/k/v, the gate and up projections) go to the two threads together.
`Lfm2LanguageModel` takes this path for one new token with the plain caches
when every weight it reads is float32 (quantized layers: their float copies),
and MLX's otherwise (prompts, batches, other dtypes, low memory).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...models import lfm2
from ...models.cache import KVCache
from .numpy_ops import silu_mul_rows, softmax_rows
from .streams import numpy_matvecs, on_both

ATTEND_SPLIT_FROM = 1024  # cached positions from which the kv heads are split over the two threads
# (~0.7 µs a position on one core against ~190 µs to hand half over: at 1,400, 1.0 -> 0.65 ms a layer)


def _view(module: nn.Module, name: str) -> np.ndarray | None:
    """A numpy view of module[name] if it is float32, else None; kept on the module
    (np.asarray costs ~5 µs) until the module holds another array under that name."""
    if name not in module:
        return None
    a = module[name]
    views = module.__dict__.setdefault("_numpy_views", {})  # an attribute, not a parameter
    if name not in views or views[name][0] is not a:
        views[name] = (a, np.asarray(a) if a.dtype == mx.float32 else None)
    return views[name][1]


def _linear(m: nn.Module) -> tuple | None:
    """(weight (out, in), bias or None) of a Linear, float32; None if it has none."""
    w = _view(m, "_dense" if isinstance(m, nn.QuantizedLinear) else "weight")
    return None if w is None else (w, _view(m, "bias"))


def _plan(lm: lfm2.LanguageModel) -> list | None:
    """The final norm's weight, then per layer its norms' weights and its linear layers'
    (weight, bias); None where some array is not float32. (Modules are read as items:
    an nn.Module attribute lookup costs ~2.6 µs, an item ~0.2.)"""
    m = lm["model"]
    plan = [_view(m["embedding_norm"], "weight")]
    for layer in m["layers"]:
        mix, mlp = layer["self_attn" if layer.is_attention else "conv"], layer["feed_forward"]
        if layer.is_attention:
            parts = dict(qkv=[_linear(mix[p]) for p in ("q_proj", "k_proj", "v_proj")],
                         q_norm=_view(mix["q_layernorm"], "weight"), k_norm=_view(mix["k_layernorm"], "weight"))
        else:
            conv = _view(mix["conv"], "weight")
            parts = dict(in_proj=_linear(mix["in_proj"]), conv=None if conv is None else conv[:, :, 0],
                         conv_bias=_view(mix["conv"], "bias"))
        parts.update(norm=_view(layer["operator_norm"], "weight"), out=_linear(mix["out_proj"]),
                     ffn_norm=_view(layer["ffn_norm"], "weight"), down=_linear(mlp["w2"]),
                     gate_up=[_linear(mlp["w1"]), _linear(mlp["w3"])])
        needed = [v for k, v in parts.items() if k != "conv_bias"] + parts["gate_up"] + parts.get("qkv", [])
        if any(v is None for v in needed):
            return None
        plan.append(parts)
    return None if plan[0] is None else plan


def _products(linears: list, x: np.ndarray) -> list:
    """[w @ x + b for each (w, b)], the products on both threads at once."""
    outs = [np.empty(w.shape[0], np.float32) for w, _ in linears]
    numpy_matvecs([w for w, _ in linears], x, outs)
    for (_, b), y in zip(linears, outs):
        if b is not None:
            y += b
    return outs


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (as mx.fast.rms_norm, float32); x (D,) or (heads, D)."""
    ms = (x @ x if x.ndim == 1 else np.einsum("hd,hd->h", x, x)[:, None]) / np.float32(x.shape[-1])
    return x * (1 / np.sqrt(ms + np.float32(eps))) * weight


@lru_cache(maxsize=8)
def _inverse_frequencies(half: int, theta: float) -> np.ndarray:
    return (1.0 / theta ** (np.arange(0, 2 * half, 2) / (2 * half))).astype(np.float32)


def _rope(x: np.ndarray, position: int, theta: float) -> np.ndarray:
    """Rotate (heads, head_dim) by `position`, halves rotated together (traditional=False),
    the angles as the reference computes them: float32 inverse frequencies × position."""
    half = x.shape[-1] // 2
    angle = (_inverse_frequencies(half, theta) * np.float32(position)).astype(np.float64)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    x1, x2 = x[:, :half], x[:, half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _kv_append(cache: KVCache, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write one position's k, v (kv_heads, head_dim) into the cache's buffers in place
    where they have room (positions past `offset` belong to no snapshot: a restored
    snapshot is full and grows, by copying, on its next update); else MLX grows them.
    Returns the cached keys and values, (kv_heads, offset, head_dim) views."""
    keys = None if cache.keys is None or cache.offset >= cache.keys.shape[2] else np.asarray(cache.keys)
    vals = None if keys is None else np.asarray(cache.values)
    if keys is None or not all(a.flags.writeable and a.flags.c_contiguous for a in (keys, vals)):
        cache.update_and_fetch(mx.array(k[None, :, None]), mx.array(v[None, :, None]))  # (1, kv, 1, hd)
        mx.eval(cache.keys, cache.values)
        keys, vals = np.asarray(cache.keys), np.asarray(cache.values)
    else:
        keys[0, :, cache.offset], vals[0, :, cache.offset] = k, v
        cache.offset += 1
    return keys[0, :, :cache.offset], vals[0, :, :cache.offset]


def _attention(attn: lfm2.Attention, p: dict, x: np.ndarray, cache: KVCache, eps: float) -> np.ndarray:
    q, k, v = _products(p["qkv"], x)
    position = cache.offset
    q = _rope(_rms(q.reshape(attn.n_heads, -1), p["q_norm"], eps), position, attn.rope_theta)
    k = _rope(_rms(k.reshape(attn.n_kv, -1), p["k_norm"], eps), position, attn.rope_theta)
    keys, values = _kv_append(cache, k, v.reshape(attn.n_kv, -1))
    # (heads, hd) -> (kv_heads, heads per kv head, hd): each group reads its own keys
    q = (q * np.float32(attn.scale)).reshape(attn.n_kv, -1, q.shape[-1])
    o = np.empty_like(q)
    if attn.n_kv > 1 and keys.shape[1] >= ATTEND_SPLIT_FROM:  # half the kv heads on each core
        h = attn.n_kv // 2
        on_both(_attend, (q[:h], keys[:h], values[:h], o[:h]), (q[h:], keys[h:], values[h:], o[h:]))
    else:
        _attend(q, keys, values, o)
    return _products([p["out"]], o.reshape(-1))[0]


def _attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """out = softmax(q · keysᵀ) · values per kv head: q (kv, group, hd), keys/values (kv, offset, hd)."""
    scores = q @ keys.transpose(0, 2, 1)  # (kv, group, offset)
    softmax_rows(scores)
    np.matmul(scores, values, out=out)


def _conv(conv: lfm2.ShortConv, p: dict, x: np.ndarray, cache) -> np.ndarray:
    b, c, h = np.split(_products([p["in_proj"]], x)[0], 3)
    w = p["conv"]  # (D, K)
    state = np.zeros((w.shape[1] - 1, w.shape[0]), np.float32) if cache.state is None else np.asarray(cache.state)[0]
    padded = np.concatenate([state, (b * h)[None]])  # (K, D): the last K-1 inputs and this one
    y = sum(padded[k] * w[:, k] for k in range(w.shape[1]))
    if p["conv_bias"] is not None:
        y = y + p["conv_bias"]
    cache.state = mx.array(padded[None, 1:])
    cache.offset += 1
    return _products([p["out"]], c * y)[0]


def step(lm: lfm2.LanguageModel, embedding: np.ndarray, cache: list) -> np.ndarray | None:
    """The final hidden state (hidden,) for one new position's embedding (hidden,),
    advancing `cache`; None (nothing touched) where some array is not float32."""
    plan = _plan(lm)
    if plan is None:
        return None
    eps = lm.config.norm_eps
    h = embedding.astype(np.float32)
    for layer, p, c in zip(lm.model.layers, plan[1:], cache):
        x = _rms(h, p["norm"], eps)
        h = h + (_attention(layer.self_attn, p, x, c, eps) if layer.is_attention else _conv(layer.conv, p, x, c))
        gate, up = _products(p["gate_up"], _rms(h, p["ffn_norm"], eps))
        silu_mul_rows(gate, up)  # in place: gate is this step's own
        h = h + _products([p["down"]], gate)[0]
    return _rms(h, plan[0], eps)


class Lfm2LanguageModel(lfm2.LanguageModel):
    def hidden(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        if embeddings.shape[:2] == (1, 1) and mask is None and cache is not None and embeddings.dtype == mx.float32 \
                and all(type(c) in (KVCache, lfm2.ConvCache) for c in cache):
            h = step(self, np.asarray(embeddings).reshape(-1), cache)
            if h is not None:
                return mx.array(h[None, None])  # (1, 1, hidden); the head stays the model's own
        return super().hidden(embeddings, cache, mask)
