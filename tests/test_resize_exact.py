"""The banded-product resize equals the tap-by-tap integer arithmetic it replaced
(kept here as the oracle: torch's uint8 antialiased kernel, written out), on
random sizes, scales and contents, for both filters."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_vlm_port import image as image_mod
from mlx_vlm_port.image import _aa_fixed_point, resize_uint8


def oracle_axis(a: np.ndarray, n_out: int, axis: int, kind: str) -> np.ndarray:
    """One pass, tap by tap in int64: (2^(p-1) + Σ pixel·weight) >> p, clamped."""
    starts, wi, p = _aa_fixed_point(a.shape[axis], n_out, kind)
    a = np.moveaxis(a, axis, 0).astype(np.int64)
    padded = np.concatenate([a, np.zeros((wi.shape[1],) + a.shape[1:], np.int64)])
    acc = np.full((n_out,) + a.shape[1:], 1 << (p - 1) if p > 0 else 0, np.int64)
    for k in range(wi.shape[1]):
        acc += padded[starts + k] * wi[:, k].reshape((-1,) + (1,) * (a.ndim - 1))
    return np.moveaxis(np.clip(acc >> p, 0, 255).astype(np.uint8), 0, axis)


def oracle(image: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    if image.shape[1] != width:
        image = oracle_axis(image, width, 1, kind)
    if image.shape[0] != height:
        image = oracle_axis(image, height, 0, kind)
    return image


def random_image(rng, h, w, c=3, style="noise"):
    if style == "noise":
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    if style == "extremes":  # 0/255 edges: where overshoot and clamping happen (lanczos)
        return (rng.integers(0, 2, (h, w, c)) * 255).astype(np.uint8)
    y, x = np.mgrid[:h, :w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256],
                    -1)[:, :, :c].astype(np.uint8)


sizes = st.integers(1, 300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=sizes, w=sizes, oh=sizes, ow=sizes, kind=st.sampled_from(["bilinear", "lanczos"]),
       style=st.sampled_from(["noise", "extremes", "ramp"]), seed=st.integers(0, 2**32 - 1))
def test_resize_equals_tap_by_tap(h, w, oh, ow, kind, style, seed):
    a = random_image(np.random.default_rng(seed), h, w, style=style)
    assert np.array_equal(resize_uint8(a, oh, ow, kind), oracle(a, oh, ow, kind))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_in=st.integers(2, 6000), ratio=st.floats(0.02, 4.0), kind=st.sampled_from(["bilinear", "lanczos"]),
       seed=st.integers(0, 2**32 - 1))
def test_one_long_axis_any_scale(n_in, ratio, kind, seed):
    """Long rows (many bands, big downscales where float64 is needed) on a few rows."""
    n_out = max(1, min(8000, round(n_in * ratio)))
    a = random_image(np.random.default_rng(seed), 3, n_in, style="extremes")
    assert np.array_equal(resize_uint8(a, 3, n_out, kind), oracle(a, 3, n_out, kind))
    t = np.ascontiguousarray(a.transpose(1, 0, 2))
    assert np.array_equal(resize_uint8(t, n_out, 3, kind), oracle(t, n_out, 3, kind))


@pytest.mark.parametrize("kind", ["bilinear", "lanczos"])
@pytest.mark.parametrize("src,dst", [
    ((3024, 4032), (1024, 1536)),  # a phone photo → LFM2-VL's 2×3 tiles
    ((3024, 4032), (416, 576)),  # … and its thumbnail (float64: the sums pass 2^24)
    ((3024, 4032), (1092, 1456)),  # SmolVLM's longest edge 1456
    ((1080, 1920), (1024, 2048)),  # upscale one axis, downscale the other
])
def test_photo_sizes(src, dst, kind):
    rng = np.random.default_rng(0)
    a = random_image(rng, *src, style="noise")
    a[: src[0] // 2] = random_image(rng, src[0] // 2, src[1], style="extremes")
    assert np.array_equal(resize_uint8(a, *dst, kind), oracle(a, *dst, kind))


@pytest.mark.parametrize("n_in,n_out,mode", [
    (4032, 1536, "f32"),  # every partial sum below 2^24
    (4032, 576, "split"),  # 255·Σw passes 2^24: hi/lo halves of the weights
    (4032, 1456, "split"),  # lanczos' negative lobes: Σ|w| ≈ 1.37·2^p
    (8064, 16, "f64"),  # ~1000 taps: even the halves' sums pass 2^24
])
def test_each_arithmetic_is_used_and_exact(n_in, n_out, mode):
    kind = "lanczos" if n_out == 1456 else "bilinear"
    assert image_mod._band_plan(n_in, n_out, kind).mode == mode
    rng = np.random.default_rng(n_out)
    for style in ("noise", "extremes"):
        a = random_image(rng, 4, n_in, style=style)
        assert np.array_equal(resize_uint8(a, 4, n_out, kind), oracle(a, 4, n_out, kind))
        t = np.ascontiguousarray(a.transpose(1, 0, 2))
        assert np.array_equal(resize_uint8(t, n_out, 4, kind), oracle(t, n_out, 4, kind))


def test_many_sizes_share_the_column_pass():
    a = random_image(np.random.default_rng(5), 301, 403)
    sizes = [(128, 192), (41, 57), (301, 57), (100, 403), (301, 403), (64, 192)]
    got = image_mod.resize_uint8_many(a, sizes, "bilinear")
    for (h, w), g in zip(sizes, got):
        assert g.shape == (h, w, 3) and g.flags.c_contiguous
        assert np.array_equal(g, oracle(a, h, w, "bilinear"))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_other_channel_counts_and_2d(channels):
    rng = np.random.default_rng(1)
    a = random_image(rng, 37, 53, channels)
    assert np.array_equal(resize_uint8(a, 20, 71, "lanczos"), oracle(a, 20, 71, "lanczos"))
    g = a[:, :, 0]
    assert np.array_equal(resize_uint8(g, 20, 71), oracle(g[:, :, None], 20, 71, "bilinear")[:, :, 0])


def test_single_threaded_path(monkeypatch):
    monkeypatch.setattr(image_mod.os, "cpu_count", lambda: 1)
    a = random_image(np.random.default_rng(2), 200, 300)
    assert np.array_equal(resize_uint8(a, 64, 96), oracle(a, 64, 96, "bilinear"))


@pytest.mark.parametrize("mean,std,rescale", [
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1 / 255),  # LFM2-VL, SmolVLM
    ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711], 1 / 255),  # CLIP's
    (0.5, 0.25, 1 / 255),
    (np.float32(0.3), (0.2,), 0.00392156862745098),
])
def test_normalize_table_equals_the_formula(mean, std, rescale):
    image = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    image[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 127, 1]]
    m = np.asarray(mean, np.float32) / np.float32(rescale)
    s = np.asarray(std, np.float32) / np.float32(rescale)
    expected = (image.astype(np.float32) - m) / s
    got = image_mod.normalize_uint8(image, mean, std, rescale)
    assert got.dtype == np.float32 and got.shape == image.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit for bit


def oracle_taps(n_in: int, n_out: int, kind: str):
    """The taps as first written: one output at a time."""
    kernel, half = image_mod.FILTERS[kind]
    scale = n_in / n_out
    support, inv = (half * scale, 1.0 / scale) if scale >= 1.0 else (half, 1.0)
    starts = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, int(np.ceil(support)) * 2 + 1), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        x0 = max(int(center - support + 0.5), 0)
        x1 = min(int(center + support + 0.5), n_in)
        ws = kernel((np.arange(x0, x1) - center + 0.5) * inv)
        starts[i] = x0
        weights[i, : x1 - x0] = ws / ws.sum()
    return starts, weights


@settings(max_examples=300, deadline=None)
@given(n_in=st.integers(1, 5000), n_out=st.integers(1, 5000), kind=st.sampled_from(["bilinear", "lanczos"]))
def test_vectorised_taps_equal_the_loop(n_in, n_out, kind):
    starts, weights = image_mod._aa_taps.__wrapped__(n_in, n_out, kind)
    ref_starts, ref_weights = oracle_taps(n_in, n_out, kind)
    assert np.array_equal(starts, ref_starts)
    assert np.array_equal(weights.view(np.int64), ref_weights.view(np.int64))  # bit for bit


@pytest.mark.parametrize("n_in,n_out", [(4032, 1536), (4032, 576), (3024, 1024), (3024, 416), (4032, 1456),
                                        (3024, 1092), (1456, 364), (8064, 2048), (1920, 2048), (1080, 1024),
                                        (16, 1024), (1024, 16), (6000, 4096), (4000, 1456)])
def test_vectorised_taps_on_photo_sizes(n_in, n_out):
    for kind in ("bilinear", "lanczos"):
        starts, weights = image_mod._aa_taps.__wrapped__(n_in, n_out, kind)
        ref_starts, ref_weights = oracle_taps(n_in, n_out, kind)
        assert np.array_equal(starts, ref_starts)
        assert np.array_equal(weights.view(np.int64), ref_weights.view(np.int64))
