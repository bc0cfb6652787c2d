"""What both golden-file scripts (make_golden.py, make_golden_idefics3.py) do alike:
store a case's uint8 pixels, its logits and greedy continuation, run every case
into an .npz (recording the reference's own errors), and print the summary."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import traceback
from pathlib import Path

import numpy as np

FULL_PIXELS_LIMIT = 600_000  # bytes (compressed) above which only sha256 + sample are stored
N_SAMPLE = 4096
MAX_NEW_TOKENS = 8


# how every reference model here runs; recorded in each manifest
REFERENCE_SETTINGS = {"dtype": "float32", "device": "cpu", "attn_implementation": "eager", "torch_manual_seed": 0}


def start_reference():
    """Import torch and transformers, quiet and deterministic. Returns (torch, versions)."""
    import PIL
    import tokenizers
    import torch
    import torchvision
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(REFERENCE_SETTINGS["torch_manual_seed"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(max(1, min(8, torch.get_num_threads())))
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__, "pillow": PIL.__version__, "python": platform.python_version()}
    return torch, versions


def load_reference(model_class, path: Path, torch):
    """The reference model in float32 with eager attention; stops if any weight did not load."""
    model, load_info = model_class.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                   output_loading_info=True)
    bad = {k: v for k, v in load_info.items() if v}
    if bad:
        raise SystemExit(f"{path}: the checkpoint did not load cleanly: {bad}")
    return model.eval()


def messages_for(n_images: int, text: str) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def npz_size(arrays: dict) -> int:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.tell()


def store_pixels(u: np.ndarray, out: dict, info: dict, rng_seed: int) -> None:
    """The uint8 pixels u: their sha256, and u itself when it compresses small enough,
    else a seeded sample of (flat index, value) pairs."""
    u = np.ascontiguousarray(u)
    out["pixel_u8_sha256"] = np.array(hashlib.sha256(u.tobytes()).hexdigest())
    u_size = npz_size({"u": u})
    info["pixel_u8_compressed_bytes"] = u_size
    if u_size <= FULL_PIXELS_LIMIT:
        out["pixel_u8"] = u
        info["pixels_stored"] = "full"
    else:
        srng = np.random.default_rng(rng_seed)
        idx = np.sort(srng.choice(u.size, size=min(N_SAMPLE, u.size), replace=False)).astype(np.int64)
        out["pixel_sample_index"] = idx
        out["pixel_sample_value"] = u.reshape(-1)[idx]
        info["pixels_stored"] = "sha256+sample"


def logits_and_greedy(model, inputs, torch, rng_seed: int, out: dict, info: dict):
    """Logits at the last and at up to 8 seeded positions, then MAX_NEW_TOKENS greedy
    tokens with the top-1 − top-2 margin of each step. Returns (forward result, generate result)."""
    n_prompt = inputs["input_ids"].shape[1]
    res = model(**inputs)
    logits = res.logits[0].float().numpy()
    out["logits_last"] = logits[-1].astype(np.float32)
    prng = np.random.default_rng(rng_seed + 1)
    pos = np.sort(prng.choice(n_prompt, size=min(8, n_prompt), replace=False)).astype(np.int32)
    out["logits_positions"] = pos
    out["logits_at_positions"] = logits[pos].astype(np.float32)
    gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         return_dict_in_generate=True, output_logits=True)
    new = gen.sequences[0, n_prompt:].numpy().astype(np.int32)
    margins = [float(torch.topk(step[0].float(), 2).values.diff().abs()) for step in gen.logits]
    out["generated_ids"] = new
    out["generated_margins"] = np.array(margins, dtype=np.float32)
    info["generated_ids"] = new.tolist()
    info["min_generated_margin"] = float(min(margins)) if margins else None
    return res, gen


def run_cases(cases: list[dict], run, out_dir: Path, only: list[str] | None, seed_base: int, entry) -> list[dict]:
    """run(case, rng_seed) -> (arrays, info) for each case (or those in `only`, keeping the
    manifest's other entries), written to <name>.npz; `entry(case, rng_seed)` is the
    manifest entry's base. A case whose reference call raises records the error."""
    manifest_path = out_dir / "manifest.json"
    old = {}
    if only and manifest_path.exists():
        old = {c["name"]: c for c in json.loads(manifest_path.read_text())["cases"]}
    entries = []
    for i, case in enumerate(cases):
        if only and case["name"] not in only:
            if case["name"] in old:
                entries.append(old[case["name"]])
            continue
        rng_seed = seed_base + 17 * i
        e = entry(case, rng_seed)
        npz = out_dir / f"{case['name']}.npz"
        if npz.exists():
            npz.unlink()
        try:
            arrays, info = run(case, rng_seed)
        except Exception as ex:  # the reference itself fails: record it
            e.update(status="reference_error", error_type=type(ex).__name__, error=str(ex)[:2000],
                     traceback_tail=traceback.format_exc().strip().splitlines()[-6:])
        else:
            np.savez_compressed(npz, **arrays)
            e.update(status="ok", file=npz.name, file_bytes=npz.stat().st_size, **info)
        entries.append(e)
    return entries


def print_summary(entries: list[dict], manifest_path: Path, views_key: str) -> None:
    total = 0
    print(f"{'case':34s} {'status':16s} {'tok':>5s} {'img':>5s} {'views':>5s} {'pixels':>14s} {'gen':>36s} {'KB':>7s}")
    for e in entries:
        kb = (e.get("file_bytes") or 0) / 1024
        total += e.get("file_bytes") or 0
        print(f"{e['name']:34s} {e['status']:16s} {e.get('num_tokens', ''):>5} {e.get('num_image_tokens', ''):>5} "
              f"{e.get(views_key, ''):>5} {e.get('pixels_stored', ''):>14s} "
              f"{str(e.get('generated_ids', e.get('error_type', ''))):>36s} {kb:7.1f}")
        if e["status"] != "ok":
            print(f"    error: {e['error'][:300]}")
    total += manifest_path.stat().st_size
    print(f"total golden size: {total / 1024:.1f} KB in {manifest_path.parent}")


PROMPT_TEXT = "Describe this image."


def img(w: int, h: int, seed: int, mode: str = "RGB") -> dict:
    """A case's image spec (tests/images.py synthetic_image arguments)."""
    return {"width": w, "height": h, "seed": seed, "mode": mode}


def begin_case(case: dict, processor, torch, image_token_id: int, **call_kwargs):
    """The case's images through the reference processor. Returns (images, inputs, out, info)
    with the prompt, input ids and token counts recorded."""
    from tests.images import synthetic_image

    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    info: dict = {}
    images = [synthetic_image(s["width"], s["height"], s["seed"], s["mode"]) for s in case["images"]]
    prompt = processor.apply_chat_template(messages_for(len(images), PROMPT_TEXT), add_generation_prompt=True)
    out["prompt"] = np.array(prompt)
    inputs = processor(images=[images] if images else None, text=prompt, return_tensors="pt",
                       **call_kwargs, **case["processor_kwargs"])
    ids = inputs["input_ids"][0].numpy()
    out["input_ids"] = ids.astype(np.int32)
    info["num_tokens"] = int(ids.shape[0])
    info["num_image_tokens"] = int((ids == image_token_id).sum())
    return images, inputs, out, info


def to_uint8(x: np.ndarray, info: dict, max_diff: float) -> np.ndarray:
    """Pixel values normalised as (u - 127.5) / 127.5 → u (uint8), checking that u
    gives x back within max_diff (recorded in info)."""
    u = np.rint(x.astype(np.float64) * 127.5 + 127.5)
    assert u.min() >= 0 and u.max() <= 255
    u = np.ascontiguousarray(u.astype(np.uint8))
    recon = (u.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    diff = float(np.abs(recon - x).max())
    info["pixel_reconstruction_max_abs_diff"] = diff
    assert diff < max_diff, diff
    return u


def case_entry(case: dict, rng_seed: int, *keys: str) -> dict:
    """A manifest entry's base: the case's name, inputs, checkpoint and `keys`, and its seed."""
    return {"name": case["name"], "file": None, "checkpoint": case["checkpoint"],
            **{k: case[k] for k in keys}, "images": case["images"],
            "messages": messages_for(len(case["images"]), PROMPT_TEXT),
            "processor_kwargs": case["processor_kwargs"], "sample_seed": rng_seed}


def drive(argv, *, doc: str, default_out: Path, tmp_prefix: str, setup, cases: list[dict], run,
          seed_base: int, entry_keys: tuple[str, ...], manifest, views_key: str) -> None:
    """A golden script's main: parse --out/--only, start the reference, `setup(tmp, torch)`
    the checkpoints (→ state), `run(case, state, torch, rng_seed)` every case, write
    `manifest(state, versions)` + the cases to manifest.json, print the summary."""
    import argparse
    import shutil
    import tempfile

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = ap.parse_args(argv)

    torch, versions = start_reference()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    manifest_path = out_dir / "manifest.json"
    try:
        state = setup(tmp, torch)
        entries = run_cases(cases, lambda case, seed: run(case, state, torch, seed), out_dir, args.only,
                            seed_base, lambda case, seed: case_entry(case, seed, *entry_keys))
        manifest_path.write_text(json.dumps({**manifest(state, versions), "prompt_text": PROMPT_TEXT,
                                             "cases": entries}, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(entries, manifest_path, views_key)
