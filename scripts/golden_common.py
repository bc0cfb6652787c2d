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
