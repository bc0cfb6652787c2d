"""The CPU backend's layers: subclasses of MLX's and of the model files' modules,
with the same parameters and names, swapped in by `use_cpu_backend`.

- One row (each decoding step), float32: MLX's CPU matmul hands a one-row product
  to sgemm, which streams the weights at ~9 GB/s with OpenBLAS; numpy's own BLAS,
  called on zero-copy views of the same buffers, runs sgemv on both cores near
  the read bandwidth. Every float32 one-row product goes there (a float32 450M
  decode step: 217 -> 114 ms with OpenBLAS; leaving the small layers to MLX made
  it slower, 356 ms, with two BLAS thread pools taking turns). So do products
  of up to FEW_ROWS rows (a decoding batch), as weight @ xᵀ (streams.py). An
  LFM2 model's whole decoding step runs in numpy (decode.py), keeping only its
  head here.
- One row, other dtypes, and MLX's CPU quantized kernel (single-threaded too):
  the layer splits its output rows over two CPU streams, one per core. The two
  streams' handover costs ~60 µs, more than it saves below ~2M float weights
  (1024×1024: no gain; 3072×1024: 645 -> 500 µs); the quantized kernel always gains.
- Quantized language-model layers decode from a float32 copy of their weight
  when memory allows (see `__init__.hold_float_weights`): MLX's CPU quantized
  kernel reads an 8-bit 450M step's weights in ~190 ms, the float32 copy through
  numpy's BLAS in ~115 ms. The copy (`_dense`, not a parameter) also serves prompts.
- Several rows through a quantized layer (a prompt): MLX's CPU quantized_matmul
  does not use BLAS (a 4608×1024 layer took 1.2 s for 269 rows); dequantizing the
  weight and using the dense matmul took 27 ms. Each stream dequantizes and
  multiplies half the output rows (a 4-bit 281-token prefill: 2.40 -> 1.96 s).
- The vision attention's softmax and the MLPs' GELU / SiLU run through numpy
  (numpy_ops.py) on each fresh result.
- The vision pass empties MLX's buffer cache before and after itself (see
  `__init__.keep_freed_buffers`): its buffers fit nothing else in the request.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...models import idefics3, lfm2, lfm2_vl, llama, siglip2
from .decode import Lfm2LanguageModel
from .numpy_ops import attention, gelu_tanh, silu_mul
from .streams import FEW_ROWS, numpy_matvec, split_apply

DENSE_FROM_ROWS = 4  # below this many rows the quantized kernel is cheaper than dequantizing
SPLIT_FROM = 1 << 21  # non-float32 weights this large or larger are split over two streams for one row


def _rows(x: mx.array) -> int:
    return x.size // x.shape[-1]


def _matvec(x: mx.array, weight: mx.array) -> mx.array:
    """x (…, 1 row, in) @ weight (out, in).T, the output rows in two halves."""
    return split_apply(lambda w: x @ w.T, (weight,), axis=0, out_axis=-1)


def _numpy_product(x: mx.array, weight: mx.array) -> mx.array:
    """x (…, rows, in) @ weight (out, in).T by numpy's BLAS as weight @ xᵀ, on views of
    both buffers (x is evaluated here: one synchronisation per layer)."""
    mx.eval(x)
    rows = _rows(x)
    y = np.empty((weight.shape[0], rows), np.float32)
    numpy_matvec(np.asarray(weight), np.asarray(x).reshape(rows, -1).T, y)  # one row: sgemv, no copy
    return mx.array(y.T.reshape(*x.shape[:-1], -1))


def _few_rows(x: mx.array, weight: mx.array) -> mx.array | None:
    """A product of one row (or, float32, up to FEW_ROWS) by the fastest route here,
    or None for MLX's own layer."""
    rows = _rows(x)
    if x.dtype == weight.dtype == mx.float32 and rows <= FEW_ROWS:
        return _numpy_product(x, weight)
    if rows != 1:
        return None
    return _matvec(x, weight) if weight.size >= SPLIT_FROM else None


def _split_quantized(layer, fn) -> mx.array:
    """fn(weight, scales, biases) on half the output rows of a quantized layer on
    each CPU stream (the packed weight, scales and biases split alike), joined."""
    names = [n for n in ("weight", "scales", "biases") if n in layer]

    def part(*arrays):
        p = dict(zip(names, arrays))
        return fn(p["weight"], p["scales"], p.get("biases"))

    return split_apply(part, tuple(layer[n] for n in names), axis=0, out_axis=-1)


def _quantized_matvec(x: mx.array, layer) -> mx.array:
    return _split_quantized(layer, lambda w, scales, biases: mx.quantized_matmul(
        x, w, scales, biases, transpose=True, group_size=layer.group_size, bits=layer.bits, mode=layer.mode))


def _dequantized_matmul(x: mx.array, layer) -> mx.array:
    return _split_quantized(layer, lambda w, scales, biases: x @ mx.dequantize(
        w, scales, biases, group_size=layer.group_size, bits=layer.bits, mode=layer.mode).T.astype(x.dtype))


def _with_bias(layer, y: mx.array) -> mx.array:
    return y + layer["bias"] if "bias" in layer else y


def _dense_product(x: mx.array, layer) -> mx.array | None:
    """x @ the layer's float32 copy.T, when it holds one."""
    if "_dense" not in layer:
        return None
    w = layer["_dense"]
    y = _few_rows(x, w)
    return x @ w.T if y is None else y


class Linear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        y = _few_rows(x, self["weight"])
        return super().__call__(x) if y is None else _with_bias(self, y)


class Embedding(nn.Embedding):
    def as_linear(self, x: mx.array) -> mx.array:
        y = _few_rows(x, self["weight"])
        return super().as_linear(x) if y is None else y


class QuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        y = _dense_product(x, self)
        if y is not None:
            return _with_bias(self, y)
        if _rows(x) == 1:
            return _with_bias(self, _quantized_matvec(x, self))
        if _rows(x) < DENSE_FROM_ROWS:
            return super().__call__(x)
        return _with_bias(self, _dequantized_matmul(x, self))


class QuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        y = _dense_product(x, self)
        if y is not None:
            return y
        if _rows(x) == 1:
            return _quantized_matvec(x, self)
        return super().as_linear(x)


class VisionAttention(siglip2.Attention):
    def __call__(self, x: mx.array) -> mx.array:
        B, L, D = x.shape
        # (B, L, D) -> (B, heads, L, head_dim)
        q, k, v = (p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        o = attention(q, k, v, self.scale)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(B, L, D))


class VisionMLP(siglip2.MLP):
    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(gelu_tanh(self.fc1(x)))


class Lfm2MLP(lfm2.MLP):
    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(silu_mul(self.w1(x), self.w3(x)))


class LlamaMLP(llama.MLP):
    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _released(features: mx.array) -> mx.array:
    mx.eval(features)
    mx.clear_cache()
    return features


class Lfm2VlModel(lfm2_vl.Model):
    def get_image_features(self, pixel_values: mx.array, spatial_shapes: mx.array,
                           pixel_attention_mask: mx.array | None = None) -> mx.array:
        mx.clear_cache()
        return _released(super().get_image_features(pixel_values, spatial_shapes, pixel_attention_mask))


class Idefics3Model(idefics3.Model):
    def get_image_features(self, pixel_values: mx.array, pixel_attention_mask: mx.array | None = None) -> mx.array:
        mx.clear_cache()
        return _released(super().get_image_features(pixel_values, pixel_attention_mask))


# each swapped class → its CPU subclass (same parameters, other __call__)
SWAPS = {nn.Linear: Linear, nn.Embedding: Embedding, nn.QuantizedLinear: QuantizedLinear,
         nn.QuantizedEmbedding: QuantizedEmbedding, siglip2.Attention: VisionAttention, siglip2.MLP: VisionMLP,
         lfm2.MLP: Lfm2MLP, lfm2.LanguageModel: Lfm2LanguageModel, llama.MLP: LlamaMLP,
         lfm2_vl.Model: Lfm2VlModel, idefics3.Model: Idefics3Model}
