"""The batch configuration of `python -m bench` (batch-f32, batch-q4): a folder's
worth of images captioned three ways, each in a fresh process.

    python -m bench.batch --impl ours-batch|ours-serial|peer-batch --model DIR --new-tokens 64

- ours-batch: mlx_vlm_port.stream_batch_generate (batch size automatic);
- ours-serial: mlx_vlm_port.stream_generate, one image after another;
- peer-batch: mlx_vlm.batch_generate (it groups the images by size and decodes
  each group as one batch).
Sixteen seeded synthetic images of eight sizes (224² to 512², one view each:
64 to 256 image tokens), the same prompt, greedy, EOS ignored, `--new-tokens`
each. A warm-up request (one image, one token) goes first; then the sixteen are
timed from the call to the last token: images per minute = 16 / that × 60.
Peak memory is the process's ru_maxrss. For ours-batch the time to the last
row's first token is the prompt phase (vision encoder + prefill of every row:
all sixteen are admitted at once), the rest the decode phase.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

SIZES = [(512, 512), (448, 320), (320, 448), (384, 384), (512, 288), (288, 512), (256, 256), (224, 224)]
TAG = "BENCH_JSON "
ROOT = Path(__file__).resolve().parents[1]


def images(cache: Path, count: int = 16) -> list[Path]:
    """`count` seeded synthetic images, two of each size (other pixels), cached as PNG."""
    sys.path.insert(0, str(ROOT))
    from tests.images import synthetic_image

    out = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        path = Path(cache) / "images" / f"batch-{w}x{h}-s{100 + i}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_image(w, h, 100 + i).save(path)
        out.append(path)
    return out


def run_ours(model_dir: str, paths: list[Path], n: int, batched: bool) -> dict:
    import mlx_vlm_port  # noqa: F401  (preloads the BLAS before MLX)
    from mlx_vlm_port import load, stream_batch_generate, stream_generate
    from mlx_vlm_port.image import load_image

    model, processor = load(model_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}])
    kw = dict(temperature=0.0, repetition_penalty=1.0, min_p=0.0, ignore_eos=True)
    list(stream_generate(model, processor, prompt, [load_image(str(paths[0]))], max_tokens=1, **kw))  # warm-up
    tokens: dict[int, list[int]] = {}
    out = {}
    tic = time.perf_counter()
    if batched:
        first = {}
        pictures = (load_image(str(p)) for p in paths)
        for index, r in stream_batch_generate(model, processor, prompt, pictures, max_tokens=n, **kw):
            tokens.setdefault(index, []).append(r.token)
            first.setdefault(index, time.perf_counter() - tic)
        out["prompt_phase_s"] = max(first.values())
    else:
        for index, p in enumerate(paths):
            tokens[index] = [r.token for r in stream_generate(model, processor, prompt, [load_image(str(p))],
                                                              max_tokens=n, **kw)]
    out["seconds"] = time.perf_counter() - tic
    out["token_ids"] = [tokens[i] for i in range(len(paths))]
    return out


def run_peer(model_dir: str, paths: list[Path], n: int) -> dict:
    import mlx_vlm

    from .worker import tolerant_detokenizer

    model, processor = mlx_vlm.load(model_dir)
    vocab = model.config.text_config.vocab_size
    tolerant_detokenizer(vocab)
    table = getattr(getattr(processor, "detokenizer", None), "tokenmap", None)
    if isinstance(table, list) and len(table) < vocab:  # batch_generate uses this one (see worker.py)
        filler = next(v for v in table if v)
        table[:] = [v or filler for v in table] + [filler] * (vocab - len(table))

    class Never:  # EOS ignored: every row runs its n tokens
        def __call__(self, token):
            return False

        def add_eos_token_ids(self, ids=None):
            pass

    for owner in (processor, getattr(processor, "tokenizer", None)):
        if owner is not None and hasattr(owner, "stopping_criteria"):
            owner.stopping_criteria = Never()
    prompt = "Describe this image."  # batch_generate applies the chat template itself
    mlx_vlm.batch_generate(model, processor, images=[str(paths[0])], prompts=[prompt], max_tokens=1)  # warm-up
    tic = time.perf_counter()
    result = mlx_vlm.batch_generate(model, processor, images=[str(p) for p in paths], prompts=[prompt] * len(paths),
                                    max_tokens=n)
    out = {"seconds": time.perf_counter() - tic, "generation_tokens": result.stats.generation_tokens}
    from importlib.metadata import version

    out["mlx_vlm"] = version("mlx-vlm")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=("ours-batch", "ours-serial", "peer-batch"), required=True)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--cache", type=Path, required=True, help="where the images are kept")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    paths = images(args.cache, args.images)
    if args.impl == "peer-batch":
        out = run_peer(args.model, paths, args.new_tokens)
    else:
        out = run_ours(args.model, paths, args.new_tokens, args.impl == "ours-batch")
    out.update(impl=args.impl, images=len(paths), new_tokens=args.new_tokens,
               images_per_min=len(paths) / out["seconds"] * 60,
               maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(TAG + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- the orchestration (python -m bench --configs batch-f32,batch-q4) ---------------------------

CONFIGS = {"batch-f32": "f32", "batch-q4": "q4"}  # name -> checkpoint
IMPLS = ("ours-batch", "ours-serial", "peer-batch")


def measure(name: str, model: Path, cache: Path, impls: list[str], rounds: int, new_tokens: int,
            run_child, env: dict, timeout: float, log) -> dict:
    """Every impl once per round, each in a fresh process; their JSON lines."""
    conf = {"checkpoint": CONFIGS[name], "model": str(model), "new_tokens": new_tokens, "runs": [], "commands": {}}
    for r in range(1, rounds + 1):
        for impl in impls:
            cmd = [sys.executable, "-m", "bench.batch", "--impl", impl, "--model", str(model), "--cache", str(cache),
                   "--new-tokens", str(new_tokens)]
            conf["commands"][impl] = " ".join(cmd)
            log(f"{name} round {r}/{rounds}: {impl} ...")
            res = run_child(cmd, env, timeout, ROOT)
            res.update(round=r, impl=impl)
            conf["runs"].append(res)
            phase = f", prompt phase {res['prompt_phase_s']:.1f} s" if "prompt_phase_s" in res else ""
            log(f"  rc {res['rc']}, {res.get('images_per_min', 0):.2f} images/min, {res.get('seconds', 0):.1f} s"
                f"{phase}, {res['child_maxrss_mb']:.0f} MB"
                + (f"\n  error: {res['error'][-300:]}" if res["rc"] else ""))
    return conf


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def report(batch: dict, machine: dict, load: dict) -> str:
    """The markdown table: per configuration and impl, median images/minute and peak RSS, and the ratios."""
    lines = ["# Batch benchmark: 16 images of 8 sizes (224² to 512², one view each), 64 new tokens each, "
             "EOS ignored, greedy", "",
             f"Machine: {machine.get('model')}, {machine.get('cpus')} CPUs, {machine.get('ram_gb')} GB; "
             f"1-minute load at start {load.get('load_at_start')}.", "",
             "| configuration | impl | images/min | peak RSS MB | prompt phase s | total s | vs ours one by one |"
             " vs mlx-vlm batch | RSS vs one by one |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, conf in batch.items():
        ok = [r for r in conf["runs"] if r["rc"] == 0]
        med = {impl: {k: _median([r[k] for r in ok if r["impl"] == impl and k in r])
                      for k in ("images_per_min", "child_maxrss_mb", "prompt_phase_s", "seconds")} for impl in IMPLS}
        serial, peer = med["ours-serial"], med["peer-batch"]
        for impl in IMPLS:
            m = med[impl]
            if m["images_per_min"] is None:
                continue

            def ratio(a, b):
                return f"{a / b:.2f}×" if a is not None and b else "–"

            lines.append(f"| {name} | {impl} | {m['images_per_min']:.2f} | {m['child_maxrss_mb']:.0f} | "
                         f"{'' if m['prompt_phase_s'] is None else round(m['prompt_phase_s'], 1)} | "
                         f"{m['seconds']:.1f} | {ratio(m['images_per_min'], serial['images_per_min'])} | "
                         f"{ratio(m['images_per_min'], peer['images_per_min'])} | "
                         f"{ratio(m['child_maxrss_mb'], serial['child_maxrss_mb'])} |")
        ids = {r["impl"]: r.get("token_ids") for r in ok if r.get("token_ids")}
        if "ours-batch" in ids and "ours-serial" in ids:
            same = ids["ours-batch"] == ids["ours-serial"]
            lines.append(f"\n{name}: ours batched and one by one give {'the same' if same else 'DIFFERENT'} tokens "
                         f"for every image.")
        lines.append("")
    lines.append("Prompt phase: from the call to the last row's first token (vision encoder and prefill of all "
                 "16 rows); the rest of ours-batch's time is the batched decode.")
    return "\n".join(lines) + "\n"
