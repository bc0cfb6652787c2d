"""Quantized checkpoints move both ways between this port and mlx-vlm 0.7.x:
ours load in `mlx_vlm.utils.load_model`, mlx-vlm's converter output loads in
ours, with the same parameters and the same logits."""

import importlib
import io
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_vlm_port import load
from quantize.convert import convert
from tests.images import synthetic_image

# The peer is in the dev extra, pinned to the versions these tests know: a broken import fails here.
# (import_module: `mlx_vlm.convert` as an attribute is the package's function of that name.)
vlm_utils = importlib.import_module("mlx_vlm.utils")
vlm_convert = importlib.import_module("mlx_vlm.convert")

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]

@pytest.fixture(scope="module")
def x(wide_path):
    _, processor = load(wide_path)
    return processor(processor.apply_chat_template(MESSAGES), [synthetic_image(333, 222, seed=5)])


def ours(path: Path, x) -> tuple[np.ndarray, dict]:
    model, _ = load(path)
    out = model(x["input_ids"], pixel_values=x["pixel_values"], spatial_shapes=x["spatial_shapes"],
                pixel_attention_mask=x["pixel_attention_mask"])
    return np.asarray(out), dict(tree_flatten(model.parameters()))


def theirs(path: Path, x, float32: bool = False) -> tuple[np.ndarray, dict]:
    model = vlm_utils.load_model(Path(path))
    if float32:  # compare a bf16 checkpoint in float32, as this port computes on the CPU
        model.set_dtype(mx.float32)
    out = model(x["input_ids"], pixel_values=x["pixel_values"], mask=None, spatial_shapes=x["spatial_shapes"],
                pixel_attention_mask=x["pixel_attention_mask"])
    return np.asarray(out.logits), dict(tree_flatten(model.parameters()))


def assert_same(a: tuple, b: tuple) -> None:
    (la, pa), (lb, pb) = a, b
    assert set(pa) == set(pb)
    for k in pa:  # identical tensors: the same packed weights, scales and biases
        np.testing.assert_array_equal(np.asarray(pa[k].astype(mx.float32) if pa[k].dtype != mx.uint32 else pa[k]),
                                      np.asarray(pb[k].astype(mx.float32) if pb[k].dtype != mx.uint32 else pb[k]),
                                      err_msg=k)
    assert np.abs(la - lb).max() <= 1e-4 * np.abs(lb).max()


@pytest.mark.parametrize("opts", [
    dict(bits=4, group_size=64, vision_bits=None, recipe=None),
    dict(bits=8, group_size=32, vision_bits=5, recipe=None),
    dict(bits=6, group_size=128, vision_bits=0, recipe=None),
    dict(bits=None, group_size=64, vision_bits=8, recipe="mixed_4_6"),
], ids=["4bit-g64", "8bit-g32-vision5", "6bit-g128-vision-none", "mixed_4_6-vision8"])
def test_our_checkpoint_loads_in_mlx_vlm(wide_path, tmp_path, x, opts):
    convert(str(wide_path), tmp_path / "q", requantize=False, force=False, dtype=None, log=io.StringIO(), **opts)
    assert_same(ours(tmp_path / "q", x), theirs(tmp_path / "q", x))


def test_our_checkpoint_without_block_dim_loads_in_mlx_vlm(tiny_path, tmp_path):
    # The default tiny config has no block_dim; the converter writes it so mlx-vlm sizes the MLP right.
    convert(str(tiny_path), tmp_path / "q", bits=4, group_size=32, vision_bits=None, recipe=None,
            requantize=False, force=False, dtype=None, log=io.StringIO())
    _, processor = load(tiny_path)
    xt = processor(processor.apply_chat_template(MESSAGES), [synthetic_image(300, 200, seed=1)])
    assert_same(ours(tmp_path / "q", xt), theirs(tmp_path / "q", xt))


def mlx_vlm_convert(src: Path, dst: Path, monkeypatch, **options) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vlm_convert.convert(str(src), str(dst), quantize=True, **options)
    return dst


@pytest.mark.parametrize("options", [
    dict(q_bits=4, q_group_size=64),
    dict(q_bits=8, q_group_size=32),
    dict(q_bits=4, q_group_size=64, quant_predicate="mixed_4_6"),
], ids=["4bit", "8bit-g32", "mixed_4_6"])
def test_mlx_vlm_conversion_loads_in_ours(wide_path, tmp_path, x, monkeypatch, options):
    dst = mlx_vlm_convert(wide_path, tmp_path / "vq", monkeypatch, **options)
    assert_same(ours(dst, x), theirs(dst, x))


def test_official_style_bf16_checkpoint_loads_in_ours(wide_path, tmp_path, x, monkeypatch):
    # The LiquidAI *-MLX-*bit repos are mlx-vlm conversions of bf16 weights: bf16 scales and biases.
    dst = mlx_vlm_convert(wide_path, tmp_path / "vq", monkeypatch, q_bits=4, q_group_size=64, dtype="bfloat16")
    assert mx.load(str(dst / "model.safetensors"))["language_model.model.embed_tokens.scales"].dtype == mx.bfloat16
    assert_same(ours(dst, x), theirs(dst, x, float32=True))


def test_legacy_quantization_section_loads_in_ours(wide_path, tmp_path, x, monkeypatch):
    # Older conversions wrote only {"group_size", "bits"} under "quantization".
    dst = mlx_vlm_convert(wide_path, tmp_path / "vq", monkeypatch, q_bits=4, q_group_size=64)
    legacy = tmp_path / "legacy"
    shutil.copytree(dst, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config.pop("quantization_config")
    config["quantization"].pop("mode")
    (legacy / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(ours(legacy, x)[0], ours(dst, x)[0])
