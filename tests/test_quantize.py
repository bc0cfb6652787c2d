"""Quantized checkpoints: every bit width and group size round-trips through
`python -m quantize`'s converter and `load()`, the plan keeps the right layers in
float, and mixed recipes / vision bits land in the config as mlx-vlm reads it."""

import io
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_vlm_port import load
from mlx_vlm_port.backends.cpu import use_cpu_backend
from mlx_vlm_port.families import LFM2_VL
from mlx_vlm_port.quant import RECIPES, plan_quantization, quantize_model
from mlx_vlm_port.save import save_checkpoint
from quantize.convert import convert
from quantize.stats import checkpoint_stats
from tests.images import synthetic_image
from tests.tiny_checkpoint import make_tiny_checkpoint

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]

@pytest.fixture(scope="module")
def sources(tiny_path, wide_path):
    return {"tiny": tiny_path, "wide": wide_path}


def inputs(processor, size=(300, 200)):
    return processor(processor.apply_chat_template(MESSAGES), [synthetic_image(*size, seed=3)])


def logits(model, x) -> np.ndarray:
    return np.asarray(model(x["input_ids"], pixel_values=x["pixel_values"], spatial_shapes=x["spatial_shapes"],
                            pixel_attention_mask=x["pixel_attention_mask"]))


def run_convert(src, dst, bits=4, group_size=64, vision_bits=None, recipe=None, requantize=False, force=False):
    log = io.StringIO()
    plan, stats = convert(str(src), dst, bits=bits, group_size=group_size, vision_bits=vision_bits, recipe=recipe,
                          requantize=requantize, force=force, dtype=None, log=log)
    return plan, stats, log.getvalue()


def quantized_layers(model) -> dict:
    return {p: (m.bits, m.group_size) for p, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("which", ["tiny", "wide"])
def test_round_trip_matches_in_memory_quantization(sources, tmp_path, which, bits, group_size):
    src = sources[which]
    plan, _, _ = run_convert(src, tmp_path / "q", bits=bits, group_size=group_size)
    got, processor = load(tmp_path / "q")
    on_the_fly, _ = load(src, bits=bits, group_size=group_size)
    in_memory, _ = load(src)
    section = quantize_model(in_memory, bits=bits, group_size=group_size)
    use_cpu_backend(in_memory)  # load() does this for quantized layers
    x = inputs(processor)
    ref = logits(in_memory, x)
    np.testing.assert_allclose(logits(got, x), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits(on_the_fly, x), ref, rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"] == section == plan.config()
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == group_size
    assert quantized_layers(got) == quantized_layers(in_memory) == {c.path: (bits, group_size) for c in plan.quantized}
    if which == "wide":  # vision tower and projector are quantized too
        assert "vision_tower.encoder.layers.0.mlp.fc1" in quantized_layers(got)
        assert "multi_modal_projector.linear_1" in quantized_layers(got)


def test_load_refuses_to_quantize_a_quantized_checkpoint(tiny_path, tmp_path):
    run_convert(tiny_path, tmp_path / "q", bits=4, group_size=64)
    with pytest.raises(ValueError, match=r"already quantized \(4-bit, group 64\).*without `bits`"):
        load(tmp_path / "q", bits=8)


def test_plan_keeps_norms_convs_and_tables_in_float(wide_path):
    model, _ = load(wide_path)
    plan = plan_quantization(model, bits=4, group_size=128)
    paths = {c.path for c in plan.layers}
    assert not paths & set(LFM2_VL.keep_float)  # patch embedding and position table: never candidates
    assert not any(p.endswith(("norm", "layernorm", "layer_norm", "conv.conv")) for p in paths)
    assert [(c.path, c.why_float) for c in plan.kept_float] == [
        ("multi_modal_projector.linear_2", "width 64 is not a multiple of the group size 128")]
    assert "language_model.model.embed_tokens" in {c.path for c in plan.quantized}
    quantize_model(model, bits=4, group_size=128)
    assert isinstance(model.vision_tower.embeddings.patch_embedding, nn.Linear)
    assert isinstance(model.language_model.model.layers[0].conv.conv, nn.Conv1d)


def test_vision_bits_none_and_different(wide_path):
    model, _ = load(wide_path)
    none = plan_quantization(model, bits=4, group_size=64, vision_bits=0)
    assert all(c.bits is None and c.why_float == "vision bits: none" for c in none.layers if c.vision)
    assert all(c.bits == 4 for c in none.layers if not c.vision)
    eight = plan_quantization(model, bits=4, group_size=64, vision_bits=8)
    section = eight.config()
    assert section["vision_tower.encoder.layers.1.self_attn.q_proj"] == {"group_size": 64, "bits": 8}
    assert "language_model.model.layers.0.conv.in_proj" not in section  # the default needs no entry


def test_default_tiny_reports_layers_kept_in_float(tiny_path, tmp_path, capsys):
    plan, stats, _ = run_convert(tiny_path, tmp_path / "q", bits=4, group_size=128)
    out = capsys.readouterr().out
    assert "kept in float (width 64 is not a multiple of the group size 128): 24 layers" in out
    assert "kept in float (width 32 is not a multiple of the group size 128): 10 layers" in out
    assert {c.path for c in plan.quantized} == {f"language_model.model.layers.{i}.feed_forward.w2" for i in range(4)} \
        | {"multi_modal_projector.linear_1"}
    assert set(stats.bits) == {c.path for c in plan.quantized}
    load(tmp_path / "q")


def test_mixed_recipe_spends_more_bits_on_sensitive_layers(wide_path, tmp_path, capsys):
    plan, stats, _ = run_convert(wide_path, tmp_path / "q", bits=None, recipe="mixed_4_6")
    model, processor = load(wide_path)
    high = LFM2_VL.sensitive_paths(model)
    assert {"language_model.model.embed_tokens", "language_model.model.layers.0.conv.in_proj",
            "language_model.model.layers.3.feed_forward.w2", "language_model.model.layers.1.self_attn.v_proj",
            "language_model.model.layers.1.self_attn.out_proj"} <= high
    assert "language_model.model.layers.2.conv.in_proj" not in high  # a middle conv layer
    assert "language_model.model.layers.2.feed_forward.w2" not in high
    assert stats.bits["language_model.model.layers.2.feed_forward.w1"] == 4
    assert stats.bits["vision_tower.encoder.layers.0.mlp.fc1"] == 4
    assert all(stats.bits[p] == 6 for p in high)
    # 4 bits + float32 scale and bias per 64 weights = 5.0; 6 bits → 7.0
    assert 5.0 < stats.quantized_bits_per_weight < 7.0
    assert f"average {stats.quantized_bits_per_weight:.3f} bits per quantized weight" in capsys.readouterr().out
    quantize_model(model, bits=None, recipe="mixed_4_6")
    use_cpu_backend(model)
    got, _ = load(tmp_path / "q")
    x = inputs(processor)
    np.testing.assert_allclose(logits(got, x), logits(model, x), rtol=0, atol=1e-6)


def test_recipes_are_keyed_on_lfm2_names(tiny_path):
    model, _ = load(tiny_path)
    names = {p for p, _ in model.named_modules()}
    assert LFM2_VL.sensitive_paths(model) <= names
    assert all(lo < hi for lo, hi in RECIPES.values()) and "mixed_4_6" in RECIPES
    with pytest.raises(ValueError, match="cannot be combined"):
        plan_quantization(model, bits=5, recipe="mixed_4_6")


def test_float_save_and_side_files(tiny_path, tmp_path):
    model, processor = load(tiny_path)
    config = json.loads((tiny_path / "config.json").read_text())
    files = save_checkpoint(model, config, tiny_path, tmp_path / "f", None)
    assert [f.name for f in files] == ["model.safetensors"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "processor_config.json", "preprocessor_config.json", "generation_config.json",
                 "model.safetensors.index.json"):
        assert (tmp_path / "f" / name).is_file(), name
    saved = json.loads((tmp_path / "f" / "config.json").read_text())
    assert "quantization" not in saved and saved["text_config"]["block_dim"] == 64
    again, _ = load(tmp_path / "f")
    x = inputs(processor)
    np.testing.assert_array_equal(logits(again, x), logits(model, x))


def test_sharded_output_with_index(wide_path, tmp_path):
    model, processor = load(wide_path)
    section = quantize_model(model, bits=4, group_size=64)
    config = json.loads((wide_path / "config.json").read_text())
    files = save_checkpoint(model, config, wide_path, tmp_path / "s", section, max_shard_bytes=200_000)
    assert len(files) > 2 and files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    got, _ = load(tmp_path / "s")
    use_cpu_backend(model)
    x = inputs(processor)
    np.testing.assert_allclose(logits(got, x), logits(model, x), rtol=0, atol=1e-6)


def test_requantize_dequantizes_first(tiny_path, tmp_path):
    run_convert(tiny_path, tmp_path / "q8", bits=8, group_size=32)
    plan, _, log = run_convert(tmp_path / "q8", tmp_path / "q4", bits=4, group_size=32, requantize=True)
    assert "quality loss compounds" in log
    model, _ = load(tmp_path / "q4")
    assert set(quantized_layers(model)) == {c.path for c in plan.quantized}


def test_bf16_source_keeps_bf16_scales(tiny_path, tmp_path):
    model, _ = load(tiny_path, dtype=mx.bfloat16)
    config = json.loads((tiny_path / "config.json").read_text())
    save_checkpoint(model, config, tiny_path, tmp_path / "bf", None)
    run_convert(tmp_path / "bf", tmp_path / "q", bits=4, group_size=32)
    weights = mx.load(str(tmp_path / "q" / "model.safetensors"))
    assert weights["language_model.model.layers.0.feed_forward.w1.scales"].dtype == mx.bfloat16
    stats = checkpoint_stats(tmp_path / "q")
    assert stats.quantized_bits_per_weight == pytest.approx(4 + 32 / 32)  # bf16 scale + bias per 32 weights


def test_sources_in_every_layout_give_the_same_checkpoint(tmp_path):
    # HF single file, HF sharded, and our own float mlx-vlm-layout re-save of the same weights.
    hf = make_tiny_checkpoint(tmp_path / "hf", seed=4)
    sharded = make_tiny_checkpoint(tmp_path / "sharded", seed=4, layout="sharded")
    model, processor = load(hf)
    save_checkpoint(model, json.loads((hf / "config.json").read_text()), hf, tmp_path / "mlx", None)
    x = inputs(processor)
    results = []
    for src in (hf, sharded, tmp_path / "mlx"):
        run_convert(src, tmp_path / f"q-{src.name}", bits=6, group_size=32)
        results.append(logits(load(tmp_path / f"q-{src.name}")[0], x))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
