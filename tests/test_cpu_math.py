"""cpu_math's numpy softmax/GELU agree with MLX's own ops, and rewrite only the
array they are given."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_vlm_port.models import cpu_math


@pytest.fixture(autouse=True)
def numpy_for_small_arrays(monkeypatch):
    monkeypatch.setattr(cpu_math, "_MIN_SIZE", 1)  # the numpy path even for these test sizes


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert a.size == 0 or np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0)


@pytest.mark.parametrize("shape", [(1, 2, 5, 8), (3, 4, 300, 16), (2, 1, 1, 4)])
def test_attention_matches_sdpa(shape):
    q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) * 3 for i in range(3))
    close(cpu_math.attention(q, k, v, 0.25), mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25))


@pytest.mark.parametrize("shape", [(1, 7, 33), (2, 600, 1000), (0, 4)])
def test_gelu_matches_mlx(shape):
    x = mx.random.normal(shape, key=mx.random.key(0)) * 4
    want = nn.gelu_approx(x)
    close(cpu_math.gelu_tanh(x * 1), want)


@pytest.mark.parametrize("shape", [(1, 3, 40), (2, 500, 700)])
def test_silu_mul_matches_mlx(shape):
    a, b = (mx.random.normal(shape, key=mx.random.key(i)) * 30 for i in range(2))  # exp(-a) overflows somewhere
    want = nn.silu(a) * b
    close(cpu_math.silu_mul(a * 1, b), want)


def test_small_arrays_stay_lazy(monkeypatch):
    monkeypatch.setattr(cpu_math, "_MIN_SIZE", 1 << 16)
    monkeypatch.setattr(cpu_math, "_in_place", None)  # would raise if called
    a = mx.random.normal((1, 1, 4608), key=mx.random.key(4))
    close(cpu_math.silu_mul(a, a), nn.silu(a) * a)


def test_in_place_leaves_inputs_alone():
    x = mx.random.normal((4, 64), key=mx.random.key(1))
    before = np.array(x)
    y = x + 0  # a fresh buffer: the one cpu_math may rewrite
    out = cpu_math.gelu_tanh(y)
    np.testing.assert_array_equal(np.array(x), before)
    close(out, nn.gelu_approx(x))
    t = mx.random.normal((8, 16), key=mx.random.key(2)).T  # a transposed (non-contiguous) input
    close(cpu_math.gelu_tanh(t), nn.gelu_approx(t))


def test_other_dtypes_use_mlx():
    x = mx.random.normal((3, 50), key=mx.random.key(3)).astype(mx.float16)
    out = cpu_math.gelu_tanh(x)
    assert out.dtype == mx.float16
    close(out, nn.gelu_approx(x), 1e-3)
