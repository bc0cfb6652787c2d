"""Quantization quality: this port's converter against mlx-vlm's, same model, same settings.

    python bench/quant_kl.py [--src FLOAT_CKPT] [--bits 4 5 6 8] [--group-size 64]
                             [--inputs 2] [--tokens 32] [--keep] [--out table.md]

Without --src it builds (once, cached by bench/checkpoints.py) a full-size
random-weight LFM2.5-VL-450M-shaped float32 checkpoint: vision 768 hidden / 12
layers / 3072 MLP / 12 heads, LM 1024 hidden / 16 layers with the real
layer_types / 16 heads, 8 KV / ff 6656 auto-adjusted to 4608 / vocab 65536.
For every bit width it converts that checkpoint with `python -m quantize`'s
converter (vision tower and projector included, the default) and with
`mlx_vlm.convert.convert(quantize=True)` (language model only, as mlx-vlm
does), then measures both against the float32 model with the metrics of
`python -m quantize.report`. Prints a Markdown table; conversions are deleted
afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_vlm_port  # noqa: E402  (loads OpenBLAS before anything imports mlx.core)
import mlx.core as mx  # noqa: E402

from mlx_vlm_port.load import load  # noqa: E402
from quantize.convert import convert  # noqa: E402
from quantize.evaluate import compare, make_inputs, run_model  # noqa: E402
from quantize.report import describe, evaluate, markdown_table  # noqa: E402
from quantize.stats import checkpoint_stats  # noqa: E402

COLUMNS = ["bits", "converter", "quantization", "size (MiB)", "bits/weight", "KL mean", "KL p99", "top-1 agree",
           "greedy-{n} agree", "convert (s)"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def convert_ours(src: Path, dst: Path, bits: int, group_size: int) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
        convert(str(src), dst, bits=bits, group_size=group_size, vision_bits=None, recipe=None, requantize=False,
                force=True, dtype=None, log=io.StringIO())


def convert_mlx_vlm(src: Path, dst: Path, bits: int, group_size: int) -> None:
    from mlx_vlm.convert import convert as vlm_convert

    with contextlib.redirect_stdout(sys.stderr):
        vlm_convert(str(src), str(dst), quantize=True, q_bits=bits, q_group_size=group_size)


def same_language_model(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical language-model tensors."""
    wa, wb = mx.load(str(a / "model.safetensors")), mx.load(str(b / "model.safetensors"))
    keys = sorted(k for k in wa if k.startswith("language_model."))
    if keys != sorted(k for k in wb if k.startswith("language_model.")):
        return False
    return all(wa[k].dtype == wb[k].dtype and bool(mx.array_equal(wa[k], wb[k])) for k in keys)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def machine() -> str:
    blas = mlx_vlm_port._blas.loaded
    return (f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu_model()}), "
            f"MLX {mx.__version__} on {mx.default_device()}, BLAS: {'OpenBLAS ' + blas if blas else 'as shipped'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, help="float checkpoint (default: the cached random LFM2.5-VL-450M)")
    p.add_argument("--cache", type=Path, default=None, help="bench cache folder (see bench/checkpoints.py)")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4], choices=(4, 5, 6, 8))
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--inputs", type=int, default=2, choices=(1, 2, 3, 4), help="synthetic image+prompt inputs")
    p.add_argument("--tokens", type=int, default=32, help="greedy continuation length")
    p.add_argument("--keep", action="store_true", help="keep the converted checkpoints")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)

    from bench import checkpoints

    cache = args.cache or checkpoints.DEFAULT_CACHE
    src = args.src or checkpoints.ensure(cache, "f32", log)
    work = Path(cache) / "quant_kl"
    tic = time.perf_counter()
    model, processor = load(src, dtype=mx.float32)
    inputs = make_inputs(processor, args.inputs)
    ref = run_model(model, inputs, args.tokens)
    del model
    log(f"float32 reference: {time.perf_counter() - tic:.0f} s")
    rows, notes = [], []
    for bits in args.bits:
        dsts = {}
        for name, fn in (("ours", convert_ours), ("mlx-vlm", convert_mlx_vlm)):
            dst = dsts[name] = work / f"{name}-{bits}bit-g{args.group_size}"
            if dst.exists():
                shutil.rmtree(dst)
            t0 = time.perf_counter()
            fn(src, dst, bits, args.group_size)
            seconds = time.perf_counter() - t0
            cmp = compare(ref, evaluate(dst, inputs, args.tokens, native=False))
            stats = checkpoint_stats(dst)
            rows.append({"bits": bits, "converter": name, "quantization": describe(dst, stats),
                         "size (MiB)": f"{stats.file_bytes / 2**20:.1f}", "bits/weight": f"{stats.bits_per_weight:.2f}",
                         "KL mean": f"{cmp.kl_mean:.5f}", "KL p99": f"{cmp.kl_p99:.5f}",
                         "top-1 agree": f"{cmp.top1:.1%}", "greedy agree": f"{cmp.greedy:.1%}",
                         "convert (s)": f"{seconds:.0f}"})
            log(f"{bits}-bit {name}: KL {cmp.kl_mean:.5f} ({time.perf_counter() - tic:.0f} s so far)")
        notes.append(f"{bits}-bit: language-model tensors bit-identical between the two converters: "
                     f"{'yes' if same_language_model(dsts['ours'], dsts['mlx-vlm']) else 'no'}")
        if not args.keep:
            for dst in dsts.values():
                shutil.rmtree(dst)
    positions = sum(int(x["input_ids"].shape[1]) for x in inputs)
    text = "\n".join([
        markdown_table(rows, COLUMNS, args.tokens), "",
        f"Source: {src} (float32). {len(inputs)} synthetic image+prompt inputs, {positions} prompt positions, "
        f"greedy continuation of {args.tokens} tokens; quantized layers evaluated dequantized to float32; "
        f"group size {args.group_size}; both converters store scales/biases in the source dtype.",
        *notes,
        f"Machine: {machine()}. Total {time.perf_counter() - tic:.0f} s.", ""])
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
