"""On-demand parity check on a full-size random checkpoint: LFM2.5-VL-450M-shaped,
or SmolVLM-256M-shaped with --family idefics3.

Two steps, each in its own environment (CI runs neither):

    # 1. reference outputs, in a venv with torch, torchvision and transformers:
    python scripts/full_parity.py reference --dir /tmp/lfm-full [--family idefics3]
    # 2. compare ours, in the project's venv:
    python scripts/full_parity.py compare --dir /tmp/lfm-full [--family idefics3]

Step 1 writes the random checkpoint (if absent) and reference.npz; step 2
prints per-case errors and exits 1 if ids, pixels, logits (1e-4 relative) or
greedy tokens disagree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.golden_common import load_reference, start_reference  # noqa: E402
from tests.images import synthetic_image  # noqa: E402
from tests.tiny_checkpoint import LFM25_VL_450M, make_tiny_checkpoint  # noqa: E402
from tests.tiny_idefics3 import SMOLVLM_256M, make_tiny_idefics3_checkpoint  # noqa: E402

# family → (write the full-size random checkpoint, the reference model class)
FAMILIES = {
    "lfm2_vl": (lambda path: make_tiny_checkpoint(path, seed=1, **LFM25_VL_450M), "Lfm2VlForConditionalGeneration"),
    "idefics3": (lambda path: make_tiny_idefics3_checkpoint(path, seed=1, **SMOLVLM_256M),
                 "Idefics3ForConditionalGeneration"),
}

CASES = {"512x512": (512, 512, 21), "1920x1080": (1920, 1080, 22), "300x200": (300, 200, 23)}
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
NEW_TOKENS = 8


def checkpoint(folder: Path, family: str) -> Path:
    path = folder / "checkpoint"
    if not (path / "config.json").exists():
        t = time.perf_counter()
        FAMILIES[family][0](path)
        print(f"wrote full-size random checkpoint to {path} in {time.perf_counter() - t:.0f} s")
    return path


def reference(folder: Path, family: str) -> None:
    torch, _ = start_reference()
    import transformers

    path = checkpoint(folder, family)
    processor = transformers.AutoProcessor.from_pretrained(path)
    model = load_reference(getattr(transformers, FAMILIES[family][1]), path, torch)
    out = {}
    for name, (w, h, seed) in CASES.items():
        prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
        inputs = processor(images=[[synthetic_image(w, h, seed)]], text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
            gen = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True)
        n = inputs["input_ids"].shape[1]
        out[f"{name}/input_ids"] = inputs["input_ids"][0].numpy()
        pixels = inputs["pixel_values"].numpy()
        if pixels.ndim == 5:  # Idefics3's (1, frames, C, H, W) -> our (frames, H, W, C)
            pixels = pixels[0].transpose(0, 2, 3, 1)
        out[f"{name}/pixel_values"] = pixels
        out[f"{name}/logits_last"] = logits[-1].numpy()
        out[f"{name}/logits_mean"] = logits.mean(0).numpy()
        out[f"{name}/generated"] = gen.sequences[0, n:].numpy()
        out[f"{name}/margins"] = np.array([float(torch.topk(s[0], 2).values.diff().abs()) for s in gen.logits])
        print(f"{name}: {n} prompt tokens, generated {out[f'{name}/generated'].tolist()}")
    np.savez(folder / "reference.npz", **out)


def compare(folder: Path) -> int:
    from mlx_vlm_port import load  # first: it loads the optimised BLAS before MLX
    from mlx_vlm_port.generate import generate_tokens
    from mlx_vlm_port.options import SamplingOptions
    from mlx_vlm_port.processor import image_inputs

    import mlx.core as mx

    ref = np.load(folder / "reference.npz")
    model, processor = load(folder / "checkpoint")
    failures = 0
    for name, (w, h, seed) in CASES.items():
        prompt = processor.apply_chat_template(MESSAGES)
        x = processor(prompt, [synthetic_image(w, h, seed)])
        ids_ok = np.array_equal(np.asarray(x["input_ids"][0]), ref[f"{name}/input_ids"])
        pix = float(np.abs(np.asarray(x["pixel_values"]) - ref[f"{name}/pixel_values"]).max())
        t = time.perf_counter()
        logits = model(x["input_ids"], **image_inputs(x))[0]
        mx.eval(logits)
        seconds = time.perf_counter() - t
        scale = np.abs(ref[f"{name}/logits_last"]).max()
        last = float(np.abs(np.asarray(logits[-1]) - ref[f"{name}/logits_last"]).max() / scale)
        mean = float(np.abs(np.asarray(logits.mean(0)) - ref[f"{name}/logits_mean"]).max() / scale)
        expected = ref[f"{name}/generated"].tolist()
        greedy = SamplingOptions(max_tokens=len(expected), temperature=0.0, top_p=1.0, min_p=0.0,
                                 repetition_penalty=1.0)
        host = processor(prompt, [synthetic_image(w, h, seed)], return_numpy=True)
        ours = [t for t, _ in generate_tokens(model, host, greedy, eos_ids=processor.eos_token_ids)]
        agree = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b), len(expected))
        tie = agree < len(expected) and ref[f"{name}/margins"][agree] < 1e-3
        ok = ids_ok and pix <= 1e-5 and last <= 1e-4 and mean <= 1e-4 and (agree == len(expected) or tie)
        failures += not ok
        print(f"{name}: ids {'equal' if ids_ok else 'DIFFER'}, pixels max err {pix:.1e}, "
              f"logits rel err last {last:.1e} / mean {mean:.1e}, greedy {agree}/{len(expected)} agree"
              f"{' (reference near-tie)' if tie else ''}, forward {seconds:.1f} s: {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description="Full-size parity check against transformers (on demand).")
    ap.add_argument("step", choices=["reference", "compare"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lfm2-vl-full-parity"))
    ap.add_argument("--family", choices=list(FAMILIES), default="lfm2_vl")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.step == "reference":
        reference(args.dir, args.family)
        return 0
    return compare(args.dir)


if __name__ == "__main__":
    sys.exit(main())
