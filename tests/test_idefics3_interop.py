"""SmolVLM (Idefics3) checkpoints move both ways between this port and mlx-vlm 0.7.x,
float and quantized, with the same parameters and the same logits; and the
quantizer's choices for a Llama language model."""

import importlib
import io
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_vlm_port import load
from quantize.convert import convert
from tests.images import synthetic_image
from tests.test_quantize_mlx_vlm import assert_same
from tests.tiny_idefics3 import make_tiny_idefics3_checkpoint

# The peer is in the dev extra, pinned to the versions these tests know: a broken import fails here.
# (import_module: `mlx_vlm.convert` as an attribute is the package's function of that name.)
vlm_utils = importlib.import_module("mlx_vlm.utils")
vlm_convert = importlib.import_module("mlx_vlm.convert")

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
# Widths that are multiples of 64 everywhere. mlx-vlm 0.7.10's Llama reads only a top-level
# rope_theta, so the mlx-vlm-side sources spell it that way (rope_parameters: None).
WIDE = dict(vision_overrides={"hidden_size": 64, "intermediate_size": 128}, text_overrides={"rope_parameters": None})


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    return make_tiny_idefics3_checkpoint(tmp_path_factory.mktemp("idefics3") / "wide", seed=3, **WIDE)


@pytest.fixture(scope="module")
def x(wide):
    _, processor = load(wide)
    return processor(processor.apply_chat_template(MESSAGES), [synthetic_image(333, 222, seed=5)],
                     longest_edge=128)


def ours(path: Path, x) -> tuple[np.ndarray, dict]:
    from mlx.utils import tree_flatten

    model, _ = load(path)
    return np.asarray(model(x["input_ids"], x["pixel_values"])), dict(tree_flatten(model.parameters()))


def theirs(path: Path, x) -> tuple[np.ndarray, dict]:
    from mlx.utils import tree_flatten

    model = vlm_utils.load_model(Path(path))
    pixels = x["pixel_values"].transpose(0, 3, 1, 2)[None]  # mlx-vlm takes (batch, frames, C, H, W)
    out = model(x["input_ids"], pixels)
    return np.asarray(getattr(out, "logits", out)), dict(tree_flatten(model.parameters()))


def test_hf_checkpoint_gives_the_same_logits_in_both(wide, x):
    la, lb = ours(wide, x)[0], theirs(wide, x)[0]
    assert np.abs(la - lb).max() <= 1e-4 * np.abs(lb).max()


@pytest.mark.parametrize("opts", [
    dict(bits=4, group_size=64, vision_bits=None, recipe=None),
    dict(bits=8, group_size=32, vision_bits=0, recipe=None),
    dict(bits=None, group_size=64, vision_bits=8, recipe="mixed_4_6"),
], ids=["4bit-g64", "8bit-g32-vision-none", "mixed_4_6-vision8"])
def test_our_checkpoint_loads_in_mlx_vlm(wide, tmp_path, x, opts):
    convert(str(wide), tmp_path / "q", requantize=False, force=False, dtype=None, log=io.StringIO(), **opts)
    assert_same(ours(tmp_path / "q", x), theirs(tmp_path / "q", x))


def test_saved_config_spells_rope_theta_for_mlx_vlm(tmp_path):
    # A transformers-5 source keeps rope_theta inside rope_parameters; the saved config repeats it
    # at the top of text_config, which is all mlx-vlm reads (it would assume 1e6).
    src = make_tiny_idefics3_checkpoint(tmp_path / "src", seed=3, vision_overrides=WIDE["vision_overrides"])
    assert "rope_theta" not in json.loads((src / "config.json").read_text())["text_config"]
    convert(str(src), tmp_path / "q", bits=8, group_size=64, vision_bits=None, recipe=None,
            requantize=False, force=False, dtype=None, log=io.StringIO())
    assert json.loads((tmp_path / "q" / "config.json").read_text())["text_config"]["rope_theta"] == 100000.0
    _, processor = load(src)
    xs = processor(processor.apply_chat_template(MESSAGES), [synthetic_image(200, 300, seed=2)], longest_edge=64)
    assert_same(ours(tmp_path / "q", xs), theirs(tmp_path / "q", xs))


@pytest.mark.parametrize("options", [dict(q_bits=4, q_group_size=64), dict(q_bits=8, q_group_size=32)],
                         ids=["4bit", "8bit-g32"])
def test_mlx_vlm_conversion_loads_in_ours(wide, tmp_path, x, monkeypatch, options):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vlm_convert.convert(str(wide), str(tmp_path / "vq"), quantize=True, **options)
    assert_same(ours(tmp_path / "vq", x), theirs(tmp_path / "vq", x))


def test_quantizer_choices_for_a_llama(wide):
    from mlx_vlm_port.quant import plan_quantization

    model, _ = load(wide)
    plan = plan_quantization(model, bits=4, group_size=64, recipe="mixed_4_6")
    bits = {c.path: c.bits for c in plan.layers}
    assert "vision_model.embeddings.position_embedding" not in bits  # kept float, listed by the model
    assert bits["language_model.embed_tokens"] == bits["language_model.lm_head"] == 6
    # 2 layers: the last is in the last eighth (v_proj, down_proj high), the first is not
    assert bits["language_model.layers.1.self_attn.v_proj"] == bits["language_model.layers.1.mlp.down_proj"] == 6
    assert bits["language_model.layers.0.self_attn.v_proj"] == bits["language_model.layers.1.self_attn.q_proj"] == 4
    assert bits["connector.modality_projection.proj"] == 4
    assert {c.path for c in plan.layers if c.vision} == {p for p in bits if p.startswith(("vision_model.", "connector."))}
