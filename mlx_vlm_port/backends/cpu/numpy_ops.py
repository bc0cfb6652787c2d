"""Softmax, tanh-GELU and SiLU through numpy: the CPU backend's one MLX/numpy boundary.

MLX's CPU exp/tanh run on one core at ~50 M elements/s; numpy's vectorised
ones are ~20x faster here (and closer to float64). So for float32 we evaluate
the MLX array, rewrite its buffer in place through a zero-copy numpy view
(MLX documents that writes to such a view show in the array) and hand the
same array on: no copy either way (a 512² tile's 12 vision layers: ~3.7 ->
~1.8 s on a 2-core x86; a 281-token LM prefill ~2.07 -> ~1.77 s). Other
dtypes, and arrays too small to pay for the synchronising mx.eval (decoding),
take MLX's ops split over two CPU streams. Only the CPU backend's layers
(layers.py) call these, each on a result it has just computed.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .streams import split_apply

_THREADS = max(1, min(os.cpu_count() or 1, 8))
_pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="cpu_math")  # numpy ufuncs release the GIL
_CHUNK = 1 << 18  # elements per step (1 MiB of float32): the passes over a chunk stay in cache
_GELU_C = math.sqrt(2 / math.pi)
_MIN_SIZE = 1 << 16  # elements


def _use_numpy(x: mx.array) -> bool:
    # small arrays (decoding one token) keep MLX's lazy, unsynchronised path
    return x.dtype == mx.float32 and x.size >= _MIN_SIZE


def _in_place(x: mx.array, fn, *others: mx.array) -> mx.array:
    """fn(rows of x, same rows of others...) over the last axis, in place in x's own
    buffer, in cache-sized row chunks spread over the threads. x must be freshly
    computed (no other owner); others (x's shape) are only read."""
    mx.eval(x, *others)
    a = np.array(x, copy=False)
    if not (a.flags.c_contiguous and a.flags.writeable):  # never seen for matmul outputs; be safe
        x = mx.array(np.ascontiguousarray(a))
        a = np.array(x, copy=False)
    cols = a.shape[-1]
    arrays = [a.reshape(-1, cols)] + [np.array(o, copy=False).reshape(-1, cols) for o in others]
    step = max(1, _CHUNK // cols)
    chunks = [[r[i:i + step] for r in arrays] for i in range(0, arrays[0].shape[0], step)]
    per = -(-len(chunks) // _THREADS)
    list(_pool.map(lambda part: [fn(*c) for c in part], [chunks[i:i + per] for i in range(0, len(chunks), per)]))
    return x


def softmax_rows(a: np.ndarray) -> None:
    np.subtract(a, a.max(axis=-1, keepdims=True), out=a)
    np.exp(a, out=a)
    np.divide(a, a.sum(axis=-1, keepdims=True), out=a)


def _gelu_tanh_rows(x: np.ndarray) -> None:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as nn.gelu_approx."""
    t = x * x
    t *= 0.044715
    t += 1
    t *= x
    t *= _GELU_C
    np.tanh(t, out=t)
    t += 1
    t *= 0.5
    np.multiply(x, t, out=x)


def silu_mul_rows(a: np.ndarray, b: np.ndarray) -> None:
    """a·sigmoid(a)·b, as nn.silu(a) * b (exp(-a) may overflow to inf: sigmoid is then 0)."""
    with np.errstate(over="ignore"):
        t = np.negative(a)
        np.exp(t, out=t)
    t += 1
    np.divide(a, t, out=a)
    a *= b


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q·kᵀ·scale)·v for (B, heads, L, head_dim), no mask: the same steps
    as MLX's CPU scaled_dot_product_attention, with the softmax in numpy."""
    if not _use_numpy(q):
        return split_apply(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale),
                           (q, k, v), axis=1)  # heads
    scores = (q * scale) @ k.swapaxes(-1, -2)
    return _in_place(scores, softmax_rows) @ v


def gelu_tanh(x: mx.array) -> mx.array:
    """gelu_pytorch_tanh. x's buffer may be overwritten: pass a fresh result that
    nothing else holds (e.g. a Linear's output), never a slice or a weight."""
    if not _use_numpy(x):
        return split_apply(nn.gelu_approx, (x,), axis=-2)  # by rows
    return _in_place(x, _gelu_tanh_rows)


def silu_mul(a: mx.array, b: mx.array) -> mx.array:
    """silu(a)·b (the gated MLPs). a's buffer may be overwritten, as in gelu_tanh."""
    if not _use_numpy(a):
        return split_apply(lambda a, b: nn.silu(a) * b, (a, b), axis=-2)  # by rows
    return _in_place(a, silu_mul_rows, b)
