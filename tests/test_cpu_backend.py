"""The CPU backend: its numpy softmax/GELU/SiLU agree with MLX's own ops and rewrite
only the array they are given; its layers compute what MLX's compute; load()
applies it on the CPU only when asked, and the plain model is mx.compile-safe."""

import threading
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_vlm_port import load
from mlx_vlm_port.backends.cpu import CACHE_BYTES, layers
from mlx_vlm_port.backends.cpu import numpy_ops as cpu_math
from tests.test_model import last_logits


@pytest.fixture
def numpy_for_small_arrays(monkeypatch):
    monkeypatch.setattr(cpu_math, "_MIN_SIZE", 1)  # the numpy path even for these test sizes


numpy_path = pytest.mark.usefixtures("numpy_for_small_arrays")


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert a.size == 0 or np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0)


@numpy_path
@pytest.mark.parametrize("shape", [(1, 2, 5, 8), (3, 4, 300, 16), (2, 1, 1, 4)])
def test_attention_matches_sdpa(shape):
    q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) * 3 for i in range(3))
    close(cpu_math.attention(q, k, v, 0.25), mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25))


@numpy_path
@pytest.mark.parametrize("shape", [(1, 7, 33), (2, 600, 1000), (0, 4)])
def test_gelu_matches_mlx(shape):
    x = mx.random.normal(shape, key=mx.random.key(0)) * 4
    want = nn.gelu_approx(x)
    close(cpu_math.gelu_tanh(x * 1), want)


@numpy_path
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


@numpy_path
def test_in_place_leaves_inputs_alone():
    x = mx.random.normal((4, 64), key=mx.random.key(1))
    before = np.array(x)
    y = x + 0  # a fresh buffer: the one cpu_math may rewrite
    out = cpu_math.gelu_tanh(y)
    np.testing.assert_array_equal(np.array(x), before)
    close(out, nn.gelu_approx(x))
    t = mx.random.normal((8, 16), key=mx.random.key(2)).T  # a transposed (non-contiguous) input
    close(cpu_math.gelu_tanh(t), nn.gelu_approx(t))


@numpy_path
def test_other_dtypes_use_mlx():
    x = mx.random.normal((3, 50), key=mx.random.key(3)).astype(mx.float16)
    out = cpu_math.gelu_tanh(x)
    assert out.dtype == mx.float16
    close(out, nn.gelu_approx(x), 1e-3)


@pytest.mark.parametrize("bits,low_memory", [(None, None), (4, True), (4, False)])
def test_cpu_layers_compute_what_mlx_layers_compute(tiny_path, bits, low_memory, monkeypatch):
    """load() swaps in the two-core / dense-prompt layers; each path (one row,
    a few rows or a decoding batch's rows, a prompt; the tied head; quantized from
    the packed weights or from their float copies) agrees with MLX's own layer."""
    monkeypatch.setattr(layers, "SPLIT_FROM", 0)  # the tiny weights take the split path too
    model, processor = load(tiny_path, bits=bits, group_size=32, low_memory=low_memory)
    kinds = {type(m) for _, m in model.named_modules()}
    assert not kinds & set(layers.SWAPS), "a layer kept MLX's class"
    linear = model.language_model.model.layers[0].feed_forward.w1
    embedding = model.language_model.model.embed_tokens
    assert ("_dense" in linear) == ("_dense" in embedding) == (bits is not None and not low_memory)
    base = {v: k for k, v in layers.SWAPS.items()}
    dim = model.config.text_config.hidden_size
    for shape in ((1, 1), (1, 2), (1, 9), (layers.FEW_ROWS, 1), (1, layers.FEW_ROWS + 1)):  # (batch, positions)
        x = mx.random.normal((*shape, dim))
        for layer, call in ((linear, "__call__"), (embedding, "as_linear")):
            got = getattr(layer, call)(x)
            want = getattr(base[type(layer)], call)(layer, x)
            assert got.shape == want.shape == (*shape, want.shape[-1])
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    assert np.isfinite(last_logits(model, processor)).all()


def quantized_lm(model) -> list:
    return [m for _, m in model.language_model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def test_float_copies_of_quantized_weights(tiny_path):
    """A quantized language model decodes from float32 copies of its weights: each
    copy is its layer's dequantized weight, no parameter (nothing saved changes),
    the vision tower keeps none, and the logits match the packed weights'."""
    model, processor = load(tiny_path, bits=4, group_size=32, low_memory=False)
    packed, _ = load(tiny_path, bits=4, group_size=32, low_memory=True)
    lm = quantized_lm(model)
    assert lm and all("_dense" in m for m in lm)
    for m in lm:
        want = mx.dequantize(m.weight, m.scales, m.biases, group_size=m.group_size, bits=m.bits)
        assert m["_dense"].dtype == mx.float32 and m["_dense"].shape == want.shape
        np.testing.assert_allclose(np.asarray(m["_dense"]), np.asarray(want), rtol=1e-6, atol=1e-7)
    assert not any("_dense" in k for k in dict(tree_flatten(model.parameters())))
    assert not any("_dense" in m for _, m in model.vision_tower.named_modules())
    assert not any("_dense" in m for m in quantized_lm(packed))
    got, want = last_logits(model, processor), last_logits(packed, processor)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_float_copies_of_every_width(bits):
    """Each quantized width's float copy is its dequantized weight (4 and 8 bits are
    unpacked by numpy, the others by MLX)."""
    from mlx_vlm_port.backends.cpu import _numpy_unpacks, hold_float_weights

    layer = nn.QuantizedLinear.from_linear(nn.Linear(256, 96, bias=False), group_size=64, bits=bits)
    assert _numpy_unpacks(layer) == (bits in (4, 8))
    want = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=bits)
    assert hold_float_weights(layer, low_memory=False) == 4 * 256 * 96
    np.testing.assert_allclose(np.asarray(layer["_dense"]), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_float_copies_only_where_memory_allows(tiny_path, monkeypatch):
    """low_memory=None holds the copies only when they take at most half the available
    memory; MLX_VLM_PORT_LOW_MEMORY=1 or 0 decides instead, an explicit keyword over both."""
    from mlx_vlm_port import backends

    def copies(**kw) -> bool:
        return all("_dense" in m for m in quantized_lm(load(tiny_path, bits=4, group_size=32, **kw)[0]))

    monkeypatch.delenv("MLX_VLM_PORT_LOW_MEMORY", raising=False)
    monkeypatch.setattr(backends.cpu, "available_memory", lambda: 1 << 40)
    assert copies()
    monkeypatch.setattr(backends.cpu, "available_memory", lambda: 1000)
    assert not any("_dense" in m for m in quantized_lm(load(tiny_path, bits=4, group_size=32)[0]))
    monkeypatch.setenv("MLX_VLM_PORT_LOW_MEMORY", "0")
    assert copies()
    assert not copies(low_memory=True)
    monkeypatch.setattr(backends.cpu, "available_memory", lambda: 1 << 40)
    monkeypatch.setenv("MLX_VLM_PORT_LOW_MEMORY", "1")
    assert not any("_dense" in m for m in quantized_lm(load(tiny_path, bits=4, group_size=32)[0]))
    assert copies(low_memory=False)


def test_load_keeps_freed_buffers_for_reuse_on_the_cpu(tiny_path):
    """MLX's CPU default (32 MB) sends the vision encoder's buffers back to the OS on
    every request; load() raises the cache limit, and never lowers a larger one."""
    previous = mx.set_cache_limit(1 << 20)
    try:
        load(tiny_path)
        assert mx.set_cache_limit(4 * CACHE_BYTES) == CACHE_BYTES
        load(tiny_path)
        assert mx.set_cache_limit(previous) == 4 * CACHE_BYTES
    finally:
        mx.set_cache_limit(previous)


def test_backend_only_where_asked(tiny_path):
    """cpu_backend=False (what load() does off the CPU) leaves MLX's and the model files' classes."""
    from mlx_vlm_port.load import load_model

    plain = load_model(tiny_path, cpu_backend=False)
    assert not {type(m) for _, m in plain.named_modules()} & set(layers.SWAPS.values())
    swapped = load_model(tiny_path, cpu_backend=True)
    assert type(swapped) is layers.Lfm2VlModel and type(swapped.vision_tower.encoder.layers[0].mlp) is layers.VisionMLP


def rel_err(got: mx.array, want: mx.array) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_plain_model_is_compile_safe(tiny, tiny_path):
    """Without the CPU backend the model is a pure function of its inputs: the vision
    encoder and a decode step (with the prompt's layer caches) under mx.compile give
    the uncompiled results."""
    from mlx_vlm_port.generate import prefill
    from mlx_vlm_port.load import load_model
    from tests.images import synthetic_image
    from tests.test_model import MESSAGES

    _, processor = tiny
    model = load_model(tiny_path, cpu_backend=False)
    x = processor(processor.apply_chat_template(MESSAGES), [synthetic_image(300, 200, seed=3)], return_numpy=True)
    h, w = (int(v) for v in x["spatial_shapes"][0])
    vt = model.vision_tower

    def encode(view):
        return vt.post_layernorm(vt.encoder(vt.embeddings(view, (h, w))))

    view = mx.array(x["pixel_values"][:1, : h * w])
    vision_err = rel_err(mx.compile(encode)(view), encode(view))

    lm = model.language_model
    features = model.get_image_features(mx.array(x["pixel_values"]), mx.array(x["spatial_shapes"]),
                                        mx.array(x["pixel_attention_mask"]))
    embeds = model.get_input_embeddings(mx.array(x["input_ids"]), image_features=features)
    cache = lm.make_cache()
    token = mx.argmax(prefill(model, embeds, cache, step=64), axis=-1)[None]  # (1, 1)
    snapshots = [c.snapshot() for c in cache]  # (arrays..., offset) per layer
    arrays = [a for s in snapshots for a in s[:-1]]

    def decode(token, *arrays):
        step_cache, it = lm.make_cache(), iter(arrays)
        for c, s in zip(step_cache, snapshots):
            c.restore((*(next(it) for _ in s[:-1]), s[-1]))
        return lm(lm.embed(token), step_cache)[:, -1]

    decode_err = rel_err(mx.compile(decode)(token, *arrays), decode(token, *arrays))
    print(f"compiled/uncompiled max relative error: vision {vision_err:.2e}, decode {decode_err:.2e}")
    assert vision_err <= 1e-5 and decode_err <= 1e-5


@pytest.mark.parametrize("n", [1, 2, 7, 4608])
@pytest.mark.parametrize("columns", [(), (3,)])
def test_numpy_matvec_halves_equal_one_product(n, columns):
    """The one-row (or few-row) product split over two threads (one BLAS thread each)
    is the plain product, for odd and tiny row counts too; it runs split where numpy's
    OpenBLAS can be told to stay on one thread (its Linux wheels)."""
    from mlx_vlm_port.backends.cpu import streams

    rng = np.random.default_rng(n)
    w, x = rng.standard_normal((n, 1024), dtype=np.float32), rng.standard_normal((1024, *columns), dtype=np.float32)
    out = np.full((n, *columns), np.nan, np.float32)
    streams.numpy_matvec(w, x, out)
    np.testing.assert_allclose(out, w @ x, rtol=1e-5, atol=1e-5)
    if "linux" in __import__("sys").platform and "openblas" in str(np.show_config(mode="dicts")).lower():
        assert streams._numpy_blas_local_threads() is not None


def test_on_both_runs_halves_on_two_threads_and_hands_back_errors():
    """The helper's half runs on another thread; its exception reaches the caller after
    both halves ended; a call from the helper thread itself runs both halves there."""
    from mlx_vlm_port.backends.cpu import streams

    if streams._numpy_blas_local_threads() is None:
        pytest.skip("numpy's BLAS cannot be held to one thread here: on_both runs both halves on the caller")
    seen = []
    streams.on_both(lambda tag: seen.append((tag, threading.get_ident())), ("first",), ("second",))
    assert sorted(t for t, _ in seen) == ["first", "second"] and seen[0][1] != seen[1][1]

    finished = []

    def half(tag):
        if tag == "second":
            raise ValueError("from the helper")
        time.sleep(0.05)
        finished.append(tag)

    with pytest.raises(ValueError, match="from the helper"):
        streams.on_both(half, ("first",), ("second",))
    assert finished == ["first"]
    streams.on_both(lambda tag: seen.append((tag, threading.get_ident())), ("again",), ("and again",))
    assert {t for t, _ in seen[-2:]} == {"again", "and again"}  # the helper still serves

    nested = []

    def inner(tag):
        streams.on_both(lambda t: nested.append((t, threading.get_ident())), (tag + ".1",), (tag + ".2",))

    streams.on_both(inner, ("caller",), ("helper",))
    by_tag = dict(nested)
    assert sorted(by_tag) == ["caller.1", "caller.2", "helper.1", "helper.2"]
    assert by_tag["caller.1"] == by_tag["caller.2"] != by_tag["helper.1"] == by_tag["helper.2"]


def test_on_both_holds_numpy_blas_to_one_thread_only_while_it_runs():
    """numpy's OpenBLAS thread count is the process's: both halves run with one BLAS
    thread, and afterwards (a new helper thread included) the count is what it was,
    so numpy products elsewhere in the process keep both cores."""
    from mlx_vlm_port.backends.cpu import streams

    set_local = streams._numpy_blas_local_threads()
    if set_local is None:
        pytest.skip("numpy's BLAS cannot be held to one thread here")

    def count():
        n = set_local(1)  # returns the count it replaced
        set_local(n)
        return n

    previous = set_local(2)
    try:
        streams._helper.cache_clear()  # a fresh helper thread starts in the next call
        during = []
        streams.on_both(lambda: during.append(count()), (), ())
        w, x = np.ones((8, 16), np.float32), np.ones(16, np.float32)
        streams.numpy_matvec(w, x, np.empty(8, np.float32))
        assert during == [1, 1] and count() == 2
    finally:
        set_local(previous)
