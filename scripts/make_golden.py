"""Record reference (transformers + torch) outputs of tiny LFM2-VL checkpoints.

Run in the reference venv (torch, torchvision, transformers):

    /work/refvenv/bin/python scripts/make_golden.py [--out tests/golden]

It builds the tiny random checkpoints with tests/tiny_checkpoint.py, feeds the
reference processor and model images made by tests/images.py, and writes one
compressed .npz per case plus tests/golden/manifest.json. The tests rebuild
the same checkpoints and images (both deterministic) and compare.

Per case (<name>.npz):
  prompt                 str   chat-template output (what the processor got)
  input_ids              int32 (T,)
  spatial_shapes         int32 (V, 2)   patches (h, w) per view
  view_lengths           int32 (V,)     unpadded patches per view (= h*w)
  padded_length          int32 ()       pixel_values.shape[1] (max_num_patches)
  pixel_u8_sha256        str   sha256 of the uint8 array u, all views'
                               unpadded patches concatenated, shape (sum L, 768),
                               C order; pixel_values == (u - 127.5) / 127.5
  pixel_u8               uint8 (sum L, 768)   only when small enough, else:
  pixel_sample_index     int64 (4096,)  flat indices into u (seeded sample)
  pixel_sample_value     uint8 (4096,)
  logits_last            float32 (vocab,)     logits at the last prompt position
  logits_positions       int32 (<=8,)         seeded random prompt positions
  logits_at_positions    float32 (<=8, vocab)
  generated_ids          int32 (<=8,)   greedy new tokens (generate, max_new_tokens=8)
  generated_margins      float32 (<=8,) top1 - top2 logit at each greedy step
  stage cases also:
  vision_embeddings      float32 (L0, Dv)  patch embed + resized pos emb, view 0
  vision_last_hidden     float32 (L0, Dv)  after post_layernorm, view 0
  projector_out          float32 (L0/4, Dt) projector output, view 0
  lm_last_hidden         float32 (Dt,)     LM last_hidden_state (after
                                           embedding_norm) at the last position
A case whose reference call raised stores no .npz; the manifest has the error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.golden_common import (MAX_NEW_TOKENS, REFERENCE_SETTINGS, begin_case, drive, img,  # noqa: E402
                                   load_reference, logits_and_greedy, store_pixels, to_uint8)
from tests.tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

CHECKPOINTS = {
    "default": {"seed": 0, "projector_use_layernorm": True, "tie": True},
    "nolayernorm_untied": {"seed": 0, "projector_use_layernorm": False, "tie": False},
}

STAGE_CASES = {"rgb_512x512", "rgb_300x200", "rgb_1920x1080"}


def build_cases() -> list[dict]:
    cases = []
    sizes = [
        (1, 1), (4000, 1), (1, 4000), (100, 5000), (512, 512), (1920, 1080),
        (1000, 3000), (640, 480), (300, 200), (37, 1111), (1024, 1024),
        (2000, 700), (768, 768),
    ]
    for i, (w, h) in enumerate(sizes):
        cases.append({"name": f"rgb_{w}x{h}", "images": [img(w, h, 10 + i)]})
    for j, mode in enumerate(["RGBA", "L", "P"]):
        cases.append({"name": f"{mode.lower()}_333x222", "images": [img(333, 222, 40 + j, mode)]})
    # what the reference does with those modes when asked to convert to RGB
    for j, mode in enumerate(["RGBA", "L", "P"]):
        cases.append(
            {
                "name": f"{mode.lower()}_333x222_convert_rgb",
                "images": [img(333, 222, 40 + j, mode)],
                "processor_kwargs": {"do_convert_rgb": True},
            }
        )
    cases.append(
        {
            "name": "rgb_1920x1080_nosplit",
            "images": [img(1920, 1080, 15)],
            "processor_kwargs": {"do_image_splitting": False},
        }
    )
    cases.append(
        {
            "name": "rgb_1000x800_tokens16to64",
            "images": [img(1000, 800, 50)],
            "processor_kwargs": {"max_image_tokens": 64, "min_image_tokens": 16},
        }
    )
    cases.append({"name": "text_only", "images": []})
    cases.append({"name": "two_images", "images": [img(640, 480, 60), img(300, 200, 61)]})
    cases.append(
        {
            "name": "nolayernorm_untied_640x480",
            "images": [img(640, 480, 17)],
            "checkpoint": "nolayernorm_untied",
        }
    )
    for c in cases:
        c.setdefault("processor_kwargs", {})
        c.setdefault("checkpoint", "default")
    return cases


def run_case(case, state, torch, rng_seed):
    model, processor = state[case["checkpoint"]]
    images, inputs, out, info = begin_case(case, processor, torch, 396)
    if images:
        pv = inputs["pixel_values"].numpy()
        mask = inputs["pixel_attention_mask"].numpy()
        ss = inputs["spatial_shapes"].numpy()
        V, P, D = pv.shape
        lengths = mask.sum(1).astype(np.int64)
        for v in range(V):
            L = int(lengths[v])
            assert L == int(ss[v, 0] * ss[v, 1]), (L, ss[v])
            assert (mask[v, :L] == 1).all() and (mask[v, L:] == 0).all(), "mask is not a prefix"
            assert (pv[v, L:] == 0).all(), "padded pixel values are not zero"
        unpadded = np.concatenate([pv[v, : int(lengths[v])] for v in range(V)], axis=0)
        u = to_uint8(unpadded, info, 1e-6)
        recon = (u.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
        info["pixel_reconstruction_bit_exact"] = bool((recon == unpadded).all())
        out["spatial_shapes"] = ss.astype(np.int32)
        out["view_lengths"] = lengths.astype(np.int32)
        out["padded_length"] = np.array(P, dtype=np.int32)
        store_pixels(u, out, info, rng_seed)
        info["num_views"] = int(V)
        info["spatial_shapes"] = ss.tolist()
        info["pixel_values_shape"] = [int(V), int(P), int(D)]

    with torch.no_grad():
        res, _ = logits_and_greedy(model, inputs, torch, rng_seed, out, info)

        if case["name"] in STAGE_CASES:
            vt = model.model.vision_tower
            pv_t = inputs["pixel_values"]
            ss_t = inputs["spatial_shapes"]
            pm_t = inputs["pixel_attention_mask"]
            L0 = int(pm_t[0].sum())
            emb = vt.embeddings(pv_t, ss_t)
            out["vision_embeddings"] = emb[0, :L0].float().numpy()
            vis = vt(pixel_values=pv_t, spatial_shapes=ss_t, pixel_attention_mask=pm_t)
            out["vision_last_hidden"] = vis.last_hidden_state[0, :L0].float().numpy()
            feats = model.model.get_image_features(
                pixel_values=pv_t, spatial_shapes=ss_t, pixel_attention_mask=pm_t
            ).pooler_output
            out["projector_out"] = feats[0].float().numpy()
            base = model.model(**inputs)
            out["lm_last_hidden"] = base.last_hidden_state[0, -1].float().numpy()
            # self-consistency: the LM head applied to it gives logits_last
            head = model.lm_head(base.last_hidden_state[0, -1])
            assert torch.allclose(head, res.logits[0, -1], atol=1e-4)
            info["stages"] = True
    return out, info


def setup(tmp: Path, torch) -> dict:
    """checkpoint name → (reference model, reference processor)."""
    from transformers import AutoProcessor, Lfm2VlForConditionalGeneration

    state = {}
    for name, ck in CHECKPOINTS.items():
        path = make_tiny_checkpoint(tmp / name, **ck)
        state[name] = (load_reference(Lfm2VlForConditionalGeneration, path, torch), AutoProcessor.from_pretrained(path))
    return state


def manifest(state: dict, versions: dict) -> dict:
    return {
        "description": "Reference outputs of tiny random LFM2-VL checkpoints; see scripts/make_golden.py",
        "regenerate": "/work/refvenv/bin/python scripts/make_golden.py",
        "versions": versions,
        "reference_settings": {**REFERENCE_SETTINGS, "generate": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}},
        "checkpoints": {k: {"make_tiny_checkpoint_kwargs": v} for k, v in CHECKPOINTS.items()},
        "pixel_encoding": "pixel_values[v, :L_v] == (u - 127.5) / 127.5 (float32), u uint8; "
        "padding rows are 0 and masked out",
        "stage_cases": sorted(STAGE_CASES),
    }


def main(argv=None):
    drive(argv, doc=__doc__, default_out=ROOT / "tests" / "golden", tmp_prefix="tiny_lfm2vl_", setup=setup,
          cases=build_cases(), run=run_case, seed_base=1000, entry_keys=(), manifest=manifest,
          views_key="num_views")


if __name__ == "__main__":
    main()
