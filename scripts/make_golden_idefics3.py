"""Record reference (transformers + torch) outputs of tiny SmolVLM (Idefics3) checkpoints.

Run in the reference venv (torch, torchvision, transformers):

    /work/refvenv/bin/python scripts/make_golden_idefics3.py [--out tests/golden/idefics3]

It builds the tiny random checkpoints with tests/tiny_idefics3.py, feeds the
reference processor (AutoProcessor from the checkpoint folder, called with
do_convert_rgb=True) and model (float32, eager attention, eval, CPU) images made
by tests/images.py, and writes one compressed .npz per case plus manifest.json.
The tests rebuild the same checkpoints and images (both deterministic) and
compare.

Per case (<name>.npz):
  prompt                 str   chat-template output (what the processor got)
  input_ids              int32 (T,)
  n_frames               int32 ()       pixel_values.shape[1] (tiles + global image, all images)
  frame_size             int32 (2,)     (H, W) of a frame (= max_image_size, square)
  pixel_u8_sha256        str   sha256 of the uint8 array u, shape (n_frames, H, W, 3),
                               channels-last, C order; pixel_values[0] ==
                               ((u - 127.5) / 127.5).transpose(0, 3, 1, 2)
  pixel_u8               uint8 (n_frames, H, W, 3)   only when small enough, else:
  pixel_sample_index     int64 (4096,)  flat indices into u (seeded sample)
  pixel_sample_value     uint8 (4096,)
  pixel_mask_all_ones    bool  ()       pixel_attention_mask is all ones
  model cases also (not the processor-only ones):
  logits_last            float32 (vocab,)     logits at the last prompt position
  logits_positions       int32 (<=8,)         seeded random prompt positions
  logits_at_positions    float32 (<=8, vocab)
  generated_ids          int32 (8,)     greedy new tokens (generate, max_new_tokens=8,
                                        EOS disabled, so always 8)
  generated_margins      float32 (8,)   top1 - top2 logit at each greedy step
  stage cases also:
  vision_embeddings      float32 (P, Dv)    frame 0: patch embed + position emb
  vision_last_hidden     float32 (P, Dv)    frame 0, after post_layernorm
  connector_out          float32 (P/s^2, Dt) frame 0, pixel shuffle + modality projection
  lm_last_hidden         float32 (Dt,)      text model final-norm hidden state at the
                                            last prompt position
Text-only cases have no pixel arrays. A case whose reference call raised
stores no .npz; the manifest has the error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.golden_common import (MAX_NEW_TOKENS, REFERENCE_SETTINGS, begin_case, drive, img,  # noqa: E402
                                   load_reference, logits_and_greedy, store_pixels, to_uint8)
from tests.tiny_idefics3 import IMAGE_TOKEN_ID, make_tiny_idefics3_checkpoint  # noqa: E402

CHECKPOINTS = {
    "default": {"seed": 0, "tie": False},
    "tied_scale4": {"seed": 1, "tie": True, "top_overrides": {"scale_factor": 4}},
    # SmolVLM-256M's processor geometry (512px frames, 2048 longest edge,
    # image_seq_len 64) on the tiny widths; processor-only cases use it
    "smolvlm_geometry": {
        "seed": 2,
        "vision_overrides": {"image_size": 512, "patch_size": 16},
        "top_overrides": {"scale_factor": 4},
        "processor_overrides": {"size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512}},
    },
}
MODEL_CHECKPOINTS = {"default", "tied_scale4"}

STAGE_CASES = {"rgb_64x64", "rgb_640x480"}


def build_cases() -> list[dict]:
    cases = []
    sizes = [(64, 64), (1, 1), (100, 5000), (5000, 100), (640, 480), (1920, 1080), (257, 255), (4000, 1)]
    for i, (w, h) in enumerate(sizes):
        cases.append({"name": f"rgb_{w}x{h}", "images": [img(w, h, 10 + i)]})
    for j, mode in enumerate(["RGBA", "P"]):
        cases.append({"name": f"{mode.lower()}_333x222", "images": [img(333, 222, 40 + j, mode)]})
    cases.append({"name": "rgb_1024x1024_nosplit", "images": [img(1024, 1024, 50)],
                  "processor_kwargs": {"do_image_splitting": False}})
    cases.append({"name": "rgb_800x600_longest128", "images": [img(800, 600, 51)],
                  "processor_kwargs": {"size": {"longest_edge": 128}}})
    cases.append({"name": "two_images", "images": [img(640, 480, 60), img(100, 300, 61)]})
    cases.append({"name": "text_only", "images": []})
    cases.append({"name": "tied_scale4_640x480", "images": [img(640, 480, 17)], "checkpoint": "tied_scale4"})
    for k, (w, h) in enumerate([(1920, 1080), (300, 200), (512, 512)]):
        cases.append({"name": f"smolvlm_geometry_{w}x{h}", "images": [img(w, h, 70 + k)],
                      "checkpoint": "smolvlm_geometry", "processor_only": True})
    for c in cases:
        c.setdefault("processor_kwargs", {})
        c.setdefault("checkpoint", "default")
        c.setdefault("processor_only", False)
    return cases


def run_case(case, state, torch, rng_seed):
    from tokenizers import Tokenizer

    model, processor, tok_path = state[case["checkpoint"]]
    kwargs = dict(case["processor_kwargs"])
    images, inputs, out, info = begin_case(case, processor, torch, IMAGE_TOKEN_ID, do_convert_rgb=True)
    ids = out["input_ids"]
    # the plain `tokenizers` library with its defaults gives the same ids
    expanded = processor.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert Tokenizer.from_file(str(tok_path)).encode(expanded).ids == ids.tolist(), "tokenizers disagrees"

    if images:
        rc = processor.image_processor(images=[images], return_row_col_info=True, do_convert_rgb=True,
                                       **kwargs)
        info["rows"], info["cols"] = [int(r) for r in rc["rows"][0]], [int(c) for c in rc["cols"][0]]
        pv = inputs["pixel_values"].numpy()  # (1, N, 3, H, W)
        mask = inputs["pixel_attention_mask"].numpy()  # (1, N, H, W)
        _, N, C, H, W = pv.shape
        u = to_uint8(pv[0].transpose(0, 2, 3, 1), info, 1e-5)  # (N, H, W, 3)
        out["n_frames"] = np.array(N, dtype=np.int32)
        out["frame_size"] = np.array([H, W], dtype=np.int32)
        out["pixel_mask_all_ones"] = np.array(bool((mask == 1).all()))
        store_pixels(u, out, info, rng_seed)
        info["n_frames"] = int(N)
        info["frame_size"] = [int(H), int(W)]
        info["pixel_mask_all_ones"] = bool(out["pixel_mask_all_ones"])

    if model is None:
        return out, info

    with torch.no_grad():
        res, gen = logits_and_greedy(model, inputs, torch, rng_seed, out, info)
        new = out["generated_ids"]
        assert new.shape[0] == MAX_NEW_TOKENS, f"generation stopped early: {new.tolist()}"
        for k, step_logits in enumerate(gen.logits):
            assert int(step_logits[0].float().argmax()) == int(new[k]), "generate did not pick the raw argmax"
        assert int(new[0]) == int(np.argmax(out["logits_last"]))

        if case["name"] in STAGE_CASES:
            mm = model.model
            p = mm.config.vision_config.patch_size
            f0 = inputs["pixel_values"][0, :1]  # (1, 3, H, W)
            m0 = inputs["pixel_attention_mask"][0, :1]  # (1, H, W)
            pam = m0.unfold(1, p, p).unfold(2, p, p).sum(dim=(-1, -2)) > 0
            emb = mm.vision_model.embeddings(pixel_values=f0, patch_attention_mask=pam)
            out["vision_embeddings"] = emb[0].float().numpy()
            vis = mm.vision_model(pixel_values=f0, patch_attention_mask=pam).last_hidden_state
            out["vision_last_hidden"] = vis[0].float().numpy()
            conn = mm.connector(vis)
            out["connector_out"] = conn[0].float().numpy()
            # self-consistency with the full image path (all frames)
            feats = mm.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output[0]
            assert torch.allclose(feats[: conn.shape[1]], conn[0], atol=1e-5)
            base = mm(**inputs)
            out["lm_last_hidden"] = base.last_hidden_state[0, -1].float().numpy()
            head = model.lm_head(base.last_hidden_state[0, -1])
            assert torch.allclose(head, res.logits[0, -1], atol=1e-4)
            info["stages"] = True
    return out, info


def setup(tmp: Path, torch) -> dict:
    """checkpoint name → (reference model or None for processor-only ones, reference
    processor, tokenizer.json path)."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    state = {}
    for name, ck in CHECKPOINTS.items():
        path = make_tiny_idefics3_checkpoint(tmp / name, **ck)
        model = None
        if name in MODEL_CHECKPOINTS:
            model = load_reference(Idefics3ForConditionalGeneration, path, torch)
            model.generation_config.eos_token_id = None  # greedy for exactly MAX_NEW_TOKENS: never stop on EOS
        state[name] = (model, AutoProcessor.from_pretrained(path), path / "tokenizer.json")
    return state


def manifest(state: dict, versions: dict) -> dict:
    return {
        "description": "Reference outputs of tiny random SmolVLM (Idefics3) checkpoints; "
        "see scripts/make_golden_idefics3.py",
        "regenerate": "/work/refvenv/bin/python scripts/make_golden_idefics3.py",
        "versions": versions,
        "reference_settings": {
            **REFERENCE_SETTINGS,
            "processor_call": "processor(images=[images] or None, text=prompt, return_tensors='pt', "
            "do_convert_rgb=True, **processor_kwargs)",
            "image_processor_class": type(state["default"][1].image_processor).__name__,
            "generate": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "eos_token_id": None},
        },
        "checkpoints": {
            k: {"make_tiny_idefics3_checkpoint_kwargs": v, "image_seq_len": state[k][1].image_seq_len,
                "model_outputs": k in MODEL_CHECKPOINTS}
            for k, v in CHECKPOINTS.items()
        },
        "pixel_encoding": "pixel_values[0] == ((u - 127.5) / 127.5).transpose(0, 3, 1, 2) (float32), "
        "u uint8 (n_frames, H, W, 3)",
        "stage_cases": sorted(STAGE_CASES),
    }


def main(argv=None):
    drive(argv, doc=__doc__, default_out=ROOT / "tests" / "golden" / "idefics3", tmp_prefix="tiny_idefics3_",
          setup=setup, cases=build_cases(), run=run_case, seed_base=2000, entry_keys=("processor_only",),
          manifest=manifest, views_key="n_frames")


if __name__ == "__main__":
    main()
