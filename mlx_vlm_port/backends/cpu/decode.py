"""One LFM2 decoding step (float32) in numpy, on zero-copy views of the model's
weights and of its layer caches: one row's, or a decoding batch's rows at once.

Run through MLX, a 450M step's ~93 one-row products each synchronise MLX's CPU
stream (`layers._numpy_product`): ~40 ms a step went to those evaluations, their
copies and the graph building around ~110 ms of products. Here the small
operations are numpy calls of a few microseconds.

The hidden states are held as (hidden, B): every product is weight @ x, so a
batch's rows share one pass over each weight (one row: sgemv). A batch's rows
are left-padded to its longest (batch_cache.py): the padded keys get no
attention weight, and each row rotates by its own position.

Each block (the mixer, then the MLP) runs as two halves at once, one on the
calling thread and one on the helper (`streams.on_both`): a half owns half the
channels (short conv), kv heads (attention) or hidden features (MLP) from the
block's input projection to its output projection, where its half of the
input columns gives a partial sum; the caller adds the two. Every hand-over
costs streaming time (~0.3 ms: one thread waits for the other to wake and to
finish), so two a layer instead of one per product matters.

`Lfm2LanguageModel` takes this path for one new token per row with one row's
plain caches or with up to FEW_ROWS rows of a batch's caches, when every weight
it reads is float32 (quantized layers: their float copies), and MLX's
otherwise (prompts, larger batches, other dtypes, low memory).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...batch_cache import BatchConvCache, BatchKVCache
from ...models import lfm2
from ...models.cache import KVCache, with_room
from .numpy_ops import silu_mul_rows, softmax_rows
from .streams import FEW_ROWS, on_both


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


def _rows(linear: tuple, rows: slice, x: np.ndarray) -> np.ndarray:
    """w[rows] @ x + b[rows] for a linear layer's (w, b); x (in, B) → (rows, B)."""
    w, b = linear
    y = w[rows] @ x
    if b is not None:
        y += b[rows, None]
    return y


def _on_halves(half, n: int, shape: tuple, *args) -> np.ndarray:
    """half(part, *args, out) for both halves `part` of range(n) at once, one per thread,
    each writing its partial sum of the block's output (`shape`) to `out`; their sum."""
    out = np.empty((2, *shape), np.float32)
    on_both(half, (slice(0, n // 2), *args, out[0]), (slice(n // 2, n), *args, out[1]))
    return np.add(out[0], out[1], out=out[0])


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the features (axis -2) of x (D, B) or (heads, hd, B), as mx.fast.rms_norm (float32)."""
    if x.shape[1:] == (1,):  # one row: scalar arithmetic, not (1, 1) arrays (~10 against ~25 µs a call)
        v = x[:, 0]
        return (v * (1 / np.sqrt(v @ v / np.float32(v.shape[0]) + np.float32(eps))) * weight)[:, None]
    ms = np.einsum("...db,...db->...b", x, x)[..., None, :] / np.float32(x.shape[-2])  # (…, 1, B)
    return x * (1 / np.sqrt(ms + np.float32(eps))) * weight[:, None]


@lru_cache(maxsize=64)
def _rotation(head_dim: int, theta: float, positions: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(cos, ±sin) (head_dim, B) at each row's position (one per step, shared by every
    layer and half), the angles as the reference computes them: float32 inverse
    frequencies × position."""
    half = head_dim // 2
    inverse = (1.0 / theta ** (np.arange(0, 2 * half, 2) / (2 * half))).astype(np.float32)
    angle = (inverse[:, None] * np.array(positions, np.float32)).astype(np.float64)  # (half, B)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    return np.concatenate([cos, cos]), np.concatenate([-sin, sin])


def _rope(x: np.ndarray, rotation: tuple) -> np.ndarray:
    """Rotate (heads, head_dim, B), halves rotated together (traditional=False):
    (x1·cos − x2·sin, x2·cos + x1·sin)."""
    cos, sin = rotation
    half = x.shape[1] // 2
    return x * cos + np.concatenate([x[:, half:], x[:, :half]], axis=1) * sin


def _kv_room(cache, used: int, rows: int, kv_heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Writable views (B, kv_heads, T, head_dim) of the cache's key and value buffers with
    room at position `used`. Positions past `used` belong to no snapshot, so they are
    written in place; a restored snapshot or a just-joined batch is full, and grows
    here by copying."""
    keys = None if cache.keys is None or used >= cache.keys.shape[2] else np.asarray(cache.keys)
    if keys is None or not all(a.flags.writeable and a.flags.c_contiguous for a in (keys, np.asarray(cache.values))):
        blank = mx.zeros((rows, kv_heads, 1, head_dim), mx.float32)
        held = (None, None) if cache.keys is None else (cache.keys[..., :used, :], cache.values[..., :used, :])
        cache.keys, cache.values = with_room(*held, used, blank, blank, cache.step)
        mx.eval(cache.keys, cache.values)
    return np.asarray(cache.keys), np.asarray(cache.values)


def _attention_half(kv_heads: slice, attn: lfm2.Attention, p: dict, x: np.ndarray, keys: np.ndarray,
                    values: np.ndarray, used: int, pad: list, rotation: tuple, eps: float, out: np.ndarray) -> None:
    """These kv heads and the query heads that read them, from q/k/v to out_proj's
    columns of those query heads; their keys and values written at `used`."""
    hd, group, rows = attn.head_dim, attn.n_heads // attn.n_kv, x.shape[1]
    q_rows = slice(kv_heads.start * group * hd, kv_heads.stop * group * hd)
    kv_rows = slice(kv_heads.start * hd, kv_heads.stop * hd)
    q, k, v = (_rows(linear, r, x).reshape(-1, hd, rows) for linear, r in zip(p["qkv"], (q_rows, kv_rows, kv_rows)))
    q = _rope(_rms(q, p["q_norm"], eps), rotation)
    keys[:, kv_heads, used] = _rope(_rms(k, p["k_norm"], eps), rotation).transpose(2, 0, 1)
    values[:, kv_heads, used] = v.transpose(2, 0, 1)
    # (heads, hd, B) -> (B, kv_heads, heads per kv head, hd): each group reads its own keys
    q = (q * np.float32(attn.scale)).transpose(2, 0, 1).reshape(rows, -1, group, hd)
    o = _attend(q, keys[:, kv_heads, :used + 1], values[:, kv_heads, :used + 1], pad)
    np.matmul(p["out"][0][:, q_rows], o.reshape(rows, -1).T, out=out)  # (B, heads·hd) -> (heads·hd, B)


def _attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pad: list) -> np.ndarray:
    """softmax(q · keysᵀ) · values per row and kv head, row b's first pad[b] keys unseen:
    q (B, kv, group, hd), keys/values (B, kv, T, hd) → (B, kv, group, hd)."""
    # keys @ qᵀ (…, T, group) reads the keys row by row: 1.6-1.9x faster here than q @ keysᵀ
    scores = np.ascontiguousarray(np.matmul(keys, q.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2))
    for b, n in enumerate(pad):
        if n:
            scores[b, ..., :n] = -np.inf
    softmax_rows(scores)
    return np.matmul(scores, values)


def _conv_half(channels: slice, p: dict, x: np.ndarray, state: np.ndarray, new_state: np.ndarray,
               out: np.ndarray) -> None:
    """These channels of the short conv: C · conv(B · x) over the last K−1 inputs
    (`state`, (B, K−1, D); this step's written to `new_state`), through out_proj's columns."""
    d = p["conv"].shape[0]
    b, c, h = (_rows(p["in_proj"], slice(i * d + channels.start, i * d + channels.stop), x) for i in range(3))
    w = p["conv"][channels]  # (channels, K)
    # (B, K-1, channels) -> (K-1, channels, B), then this step's input: (K, channels, B)
    padded = np.concatenate([state[:, :, channels].transpose(1, 2, 0), (b * h)[None]])
    y = sum(padded[k] * w[:, k, None] for k in range(w.shape[1]))
    if p["conv_bias"] is not None:
        y = y + p["conv_bias"][channels, None]
    new_state[:, :, channels] = padded[1:].transpose(2, 0, 1)
    np.matmul(p["out"][0][:, channels], c * y, out=out)


def _mlp_half(features: slice, p: dict, x: np.ndarray, out: np.ndarray) -> None:
    """out = w2[:, features] @ (silu(w1[features] @ x) · w3[features] @ x)."""
    gate, up = (_rows(linear, features, x) for linear in p["gate_up"])
    silu_mul_rows(gate, up)  # in place: gate is this step's own
    np.matmul(p["down"][0][:, features], gate, out=out)


def _with_bias(y: np.ndarray, linear: tuple) -> np.ndarray:
    return y if linear[1] is None else y + linear[1][:, None]


def _written(cache) -> tuple[int, list]:
    """(positions written, each row's padding) of an attention layer's cache."""
    if isinstance(cache, BatchKVCache):
        return cache.end, cache.pad
    return cache.offset, [0]


def _advance(cache) -> None:
    """Count this step's position in a layer's cache as MLX's layers would."""
    if isinstance(cache, BatchKVCache):
        cache.end, cache.offset = cache.end + 1, cache.offset + 1  # offset: one per row
    else:
        cache.offset += 1


def step(lm: lfm2.LanguageModel, embeddings: np.ndarray, cache: list) -> np.ndarray | None:
    """The final hidden states (B, hidden) for one new position of each row, embeddings
    (B, hidden), advancing `cache` (one row's plain caches, or a batch's); None (nothing
    touched) where some array is not float32."""
    plan = _plan(lm)
    if plan is None:
        return None
    eps = lm.config.norm_eps
    h = np.ascontiguousarray(embeddings.T, np.float32)  # (hidden, B): each product's rows stream once for all rows
    for layer, p, c in zip(lm.model.layers, plan[1:], cache):
        x = _rms(h, p["norm"], eps)
        if layer.is_attention:
            attn = layer["self_attn"]
            used, pad = _written(c)
            keys, values = _kv_room(c, used, h.shape[1], attn.n_kv, attn.head_dim)
            rotation = _rotation(attn.head_dim, attn.rope_theta, tuple(used - n for n in pad))
            mixed = _on_halves(_attention_half, attn.n_kv, h.shape, attn, p, x, keys, values, used, pad, rotation,
                               eps)
        else:
            w = p["conv"]  # (D, K)
            state = np.zeros((h.shape[1], w.shape[1] - 1, w.shape[0]), np.float32) if c.state is None \
                else np.asarray(c.state)
            new_state = np.empty_like(state)
            mixed = _on_halves(_conv_half, w.shape[0], h.shape, p, x, state, new_state)
            c.state = mx.array(new_state)
        _advance(c)
        h = h + _with_bias(mixed, p["out"])
        h = h + _with_bias(_on_halves(_mlp_half, p["down"][0].shape[1], h.shape, p, _rms(h, p["ffn_norm"], eps)),
                           p["down"])
    return _rms(h, plan[0], eps).T


def _steppable(embeddings: mx.array, cache: list | None, mask: mx.array | None) -> bool:
    """One new position per row, float32, and either one row's plain caches (no mask) or
    a batch's (whose mask is its padding, which the step reads from the caches)."""
    if embeddings.shape[1] != 1 or embeddings.dtype != mx.float32 or cache is None:
        return False
    kinds = {type(c) for c in cache}
    if kinds <= {BatchKVCache, BatchConvCache}:
        return embeddings.shape[0] <= FEW_ROWS
    return kinds <= {KVCache, lfm2.ConvCache} and mask is None and embeddings.shape[0] == 1


class Lfm2LanguageModel(lfm2.LanguageModel):
    def hidden(self, embeddings: mx.array, cache: list | None = None, mask: mx.array | None = None) -> mx.array:
        if _steppable(embeddings, cache, mask):
            h = step(self, np.asarray(embeddings)[:, 0], cache)
            if h is not None:
                return mx.array(h[:, None])  # (B, 1, hidden); the head stays the model's own
        return super().hidden(embeddings, cache, mask)
