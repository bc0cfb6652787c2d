"""Idefics3 (SmolVLM) parity with transformers, from committed golden files made by
scripts/make_golden_idefics3.py: ids exact, pixels exact (torchvision's lanczos),
logits ≤ 1e-4 relative, greedy tokens identical (unless the reference was at a near-tie)."""

import hashlib
import json

import mlx.core as mx
import numpy as np
import pytest

from tests.conftest import GOLDEN
from tests.images import synthetic_image
from tests.test_parity import RTOL, assert_greedy_matches, assert_logits_match, rel_err
from tests.tiny_idefics3 import make_tiny_idefics3_checkpoint

FOLDER = GOLDEN / "idefics3"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
CASES = [c for c in MANIFEST["cases"] if c.get("status") == "ok"]
MODEL_CASES = [c for c in CASES if not c["processor_only"]]


@pytest.fixture(scope="session")
def idefics3_loaded(tmp_path_factory) -> dict:
    from mlx_vlm_port import load

    root = tmp_path_factory.mktemp("idefics3")
    return {name: load(make_tiny_idefics3_checkpoint(root / name, **spec["make_tiny_idefics3_checkpoint_kwargs"]))
            for name, spec in MANIFEST["checkpoints"].items()}


def run_processor(case, processor):
    images = [synthetic_image(s["width"], s["height"], s["seed"], s["mode"]) for s in case["images"]]
    prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True)
    kwargs = {k: v for k, v in case["processor_kwargs"].items() if k != "do_convert_rgb"}
    if "size" in kwargs:  # the reference's size={"longest_edge": N} is our longest_edge=N
        kwargs["longest_edge"] = kwargs.pop("size")["longest_edge"]
    return prompt, processor(prompt, images, return_numpy=True, **kwargs)


def prepared(c, idefics3_loaded):
    model, processor = idefics3_loaded[c["checkpoint"]]
    prompt, inputs = run_processor(c, processor)
    return c, np.load(FOLDER / c["file"]), model, processor, prompt, inputs


@pytest.fixture(scope="module", params=CASES, ids=[c["name"] for c in CASES])
def case(request, idefics3_loaded):
    return prepared(request.param, idefics3_loaded)


@pytest.fixture(scope="module", params=MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def model_case(request, idefics3_loaded):
    """The cases with reference model outputs (not the processor-only ones)."""
    return prepared(request.param, idefics3_loaded)


def test_prompt_and_ids(case):
    c, ref, _, _, prompt, inputs = case
    assert prompt == str(ref["prompt"])
    np.testing.assert_array_equal(inputs["input_ids"][0], ref["input_ids"])


def test_pixels_exact(case):
    c, ref, _, _, _, inputs = case
    if "n_frames" not in ref.files:  # a text-only prompt
        assert "pixel_values" not in inputs
        return
    pv = inputs["pixel_values"]
    assert pv.shape == (int(ref["n_frames"]), *ref["frame_size"].tolist(), 3)
    u = np.rint(pv.astype(np.float64) * 127.5 + 127.5).astype(np.uint8)
    assert np.abs((u.astype(np.float32) - 127.5) / 127.5 - pv).max() < 1e-5
    if "pixel_u8" in ref.files:
        diff = u.astype(int) - ref["pixel_u8"]
        assert not diff.any(), f"{(diff != 0).mean():.2%} of pixel values differ, max {np.abs(diff).max()}"
    else:
        np.testing.assert_array_equal(u.reshape(-1)[ref["pixel_sample_index"]], ref["pixel_sample_value"])
        assert hashlib.sha256(u.tobytes()).hexdigest() == str(ref["pixel_u8_sha256"])


def test_logits(model_case):
    c, ref, model, _, _, inputs = model_case
    pixels = mx.array(inputs["pixel_values"]) if "pixel_values" in inputs else None
    assert_logits_match(np.asarray(model(mx.array(inputs["input_ids"]), pixels)[0].astype(mx.float32)), ref)


def test_greedy(model_case):
    c, ref, model, _, _, inputs = model_case
    checked = assert_greedy_matches(model, inputs, ref, eos_ids=set())  # the reference ran without EOS
    assert checked == len(ref["generated_ids"])  # no SmolVLM case reaches a reference near-tie


@pytest.mark.parametrize("name", MANIFEST["stage_cases"])
def test_stages(name, idefics3_loaded):
    """Each stage on its own, so a mismatch points at its stage."""
    c = next(c for c in CASES if c["name"] == name)
    ref = np.load(FOLDER / c["file"])
    model, processor = idefics3_loaded[c["checkpoint"]]
    _, inputs = run_processor(c, processor)
    frames = mx.array(inputs["pixel_values"])
    vm = model.vision_model
    assert rel_err(vm.embeddings(frames[:1])[0], ref["vision_embeddings"]) < RTOL
    features = vm(frames)
    assert rel_err(features[0], ref["vision_last_hidden"]) < RTOL
    assert rel_err(model.connector(features[:1]), ref["connector_out"]) < RTOL
    embeds = model.get_input_embeddings(mx.array(inputs["input_ids"]), frames)
    assert rel_err(model.language_model.hidden(embeds)[0, -1], ref["lm_last_hidden"]) < RTOL


def test_reference_layout_5d_pixels_give_the_same_logits(idefics3_loaded):
    """The reference's (batch, frames, C, H, W) pixel layout is accepted as well."""
    c = next(c for c in MODEL_CASES if c["name"] == "rgb_640x480")
    model, processor = idefics3_loaded[c["checkpoint"]]
    _, inputs = run_processor(c, processor)
    ids, frames = mx.array(inputs["input_ids"]), mx.array(inputs["pixel_values"])
    ours = model(ids, frames)[0, -1]
    theirs = model(ids, frames.transpose(0, 3, 1, 2)[None])[0, -1]
    assert rel_err(theirs, ours) < 1e-6
