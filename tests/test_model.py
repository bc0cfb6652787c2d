"""Model behaviour beyond the golden files: caches, chunked prefill, config
quirks, checkpoint layouts and load errors."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_vlm_port import load
from mlx_vlm_port.generate import prefill
from mlx_vlm_port.load import ModelLoadError
from tests.images import synthetic_image
from tests.safetensors_io import read_safetensors, write_safetensors
from tests.tiny_checkpoint import make_tiny_checkpoint

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


def image_inputs(processor, size=(300, 200)):
    prompt = processor.apply_chat_template(MESSAGES)
    return processor(prompt, [synthetic_image(*size, seed=3)])


def last_logits(model, processor, size=(300, 200)):
    x = image_inputs(processor, size)
    out = model(x["input_ids"], pixel_values=x["pixel_values"], pixel_attention_mask=x["pixel_attention_mask"],
                spatial_shapes=x["spatial_shapes"])
    return np.asarray(out[0, -1])


def test_token_by_token_decode_equals_full_forward(tiny):
    model, processor = tiny
    x = image_inputs(processor)
    embeds = model.get_input_embeddings(x["input_ids"], x["pixel_values"], x["spatial_shapes"],
                                        x["pixel_attention_mask"])
    extra = mx.array([[300, 301, 302, 7, 600]])
    full = model.language_model(mx.concatenate([embeds, model.language_model.model.embed_tokens(extra)], 1))
    cache = model.language_model.make_cache()
    steps = [prefill(model, embeds, cache, step=64)]
    for t in extra[0].tolist():
        steps.append(model.language_model(model.language_model.model.embed_tokens(mx.array([[t]])), cache)[:, -1])
    n = embeds.shape[1]
    for i, s in enumerate(steps):
        np.testing.assert_allclose(np.asarray(s[0]), np.asarray(full[0, n - 1 + i]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("step", [1, 7, 100, 4096])
def test_chunked_prefill_matches_one_pass(tiny, step):
    model, processor = tiny
    x = image_inputs(processor)
    embeds = model.get_input_embeddings(x["input_ids"], x["pixel_values"], x["spatial_shapes"],
                                        x["pixel_attention_mask"])
    ref = model.language_model(embeds)[0, -1]
    got = prefill(model, embeds, model.language_model.make_cache(), step=step)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)


def edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def quirk_model_type(c):
    c["model_type"] = "lfm2-vl"


def quirk_image_token_index(c):
    c["image_token_index"] = c.pop("image_token_id")


def quirk_rope_parameters(c):
    c["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": c["text_config"].pop("rope_theta")}


def quirk_ff_dim_spelling(c):
    t = c["text_config"]
    t.pop("block_ff_dim", None)
    t["intermediate_size"] = 192


def quirk_no_block_dim(c):
    c["text_config"].pop("block_dim", None)


def quirk_tie_null(c):
    c["tie_word_embeddings"] = None
    c["text_config"].pop("tie_word_embeddings", None)


@pytest.mark.parametrize("quirk", [quirk_model_type, quirk_image_token_index, quirk_rope_parameters,
                                   quirk_ff_dim_spelling, quirk_no_block_dim, quirk_tie_null],
                         ids=lambda f: f.__name__)
def test_config_quirks_load_the_same_model(tiny, tiny_path, tmp_path, quirk):
    path = tmp_path / "ck"
    shutil.copytree(tiny_path, path)
    edit_config(path, quirk)
    model, processor = load(path)
    np.testing.assert_allclose(last_logits(model, processor), last_logits(*tiny), rtol=1e-5, atol=1e-5)


def test_block_dim_is_not_assumed_1024(tmp_path):
    """A hidden size other than 1024 with no block_dim in the config (a peer's bug)."""
    path = make_tiny_checkpoint(tmp_path / "ck", text_overrides={"hidden_size": 96})
    edit_config(path, quirk_no_block_dim)
    model, processor = load(path)
    assert model.language_model.model.embed_tokens.weight.shape[1] == 96
    assert np.isfinite(last_logits(model, processor)).all()


def test_projector_without_layernorm_and_untied_head(checkpoints, loaded):
    model, _ = loaded["nolayernorm_untied"]
    assert "layer_norm" not in model.multi_modal_projector
    assert "lm_head" in model.language_model


def test_sharded_checkpoint_matches_single_file(tiny, tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck", layout="sharded")
    assert (path / "model.safetensors.index.json").exists()
    np.testing.assert_allclose(last_logits(*load(path)), last_logits(*tiny), rtol=1e-6, atol=1e-6)


def to_mlx_vlm_layout(src, dst):
    """Rewrite an HF checkpoint the way mlx-vlm's converter lays it out."""
    shutil.copytree(src, dst)
    tensors = read_safetensors(dst / "model.safetensors")
    out = {}
    for k, v in tensors.items():
        k = k.replace("model.vision_tower.vision_model.", "vision_tower.")
        k = k.replace("model.language_model.", "language_model.model.")
        k = k.replace("model.multi_modal_projector.", "multi_modal_projector.")
        if k.endswith("conv.conv.weight"):
            v = v.transpose(0, 2, 1)
        out[k] = v
    write_safetensors(dst / "model.safetensors", out)
    return dst


def test_mlx_vlm_layout_matches_hf_layout(tiny, tiny_path, tmp_path):
    path = to_mlx_vlm_layout(tiny_path, tmp_path / "mlxvlm")
    np.testing.assert_allclose(last_logits(*load(path)), last_logits(*tiny), rtol=1e-6, atol=1e-6)


def test_bf16_checkpoint_is_computed_in_float32_on_cpu(tiny_path, tmp_path):
    path = tmp_path / "bf16"
    shutil.copytree(tiny_path, path)
    weights = mx.load(str(path / "model.safetensors"))
    mx.save_safetensors(str(path / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    model, processor = load(path)
    assert model.language_model.model.embed_tokens.weight.dtype == mx.float32
    assert np.isfinite(last_logits(model, processor)).all()


@pytest.mark.parametrize("damage,message", [
    (lambda t: t.pop("model.language_model.embedding_norm.weight"), "missing: language_model.model.embedding_norm"),
    (lambda t: t.__setitem__("model.extra.weight", np.zeros(3, np.float32)), "unexpected: extra.weight"),
    (lambda t: t.__setitem__("model.language_model.embedding_norm.weight", np.ones(5, np.float32)),
     "wrong shape: language_model.model.embedding_norm.weight (5,)"),
])
def test_load_errors_name_the_file_and_tensor(tiny_path, tmp_path, damage, message):
    path = tmp_path / "ck"
    shutil.copytree(tiny_path, path)
    tensors = read_safetensors(path / "model.safetensors")
    damage(tensors)
    write_safetensors(path / "model.safetensors", tensors)
    with pytest.raises(ModelLoadError) as e:
        load(path)
    assert message in str(e.value) and "model.safetensors" in str(e.value)


def test_unreadable_checkpoints_give_one_line_errors(tiny_path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(empty)
    path = tmp_path / "corrupt"
    shutil.copytree(tiny_path, path)
    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="cannot read safetensors"):
        load(path)
    with pytest.raises(ModelLoadError, match="not a checkpoint folder"):
        load(tmp_path / "nope" / "deeper")


def test_hub_id_offline_and_uncached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load("LiquidAI/LFM2.5-VL-450M")
