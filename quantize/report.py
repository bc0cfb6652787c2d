"""`python -m quantize.report SRC DST [DST ...]`: what quantization costs.

For each DST: size on disk, bits per weight, and against SRC run in float32 on
fixed synthetic image + prompt inputs: KL divergence of the next-token
distributions at every prompt position (mean, 99th percentile), top-1
agreement, and agreement of a greedy continuation with SRC's.

By default quantized layers are evaluated dequantized to float32: the same
numbers up to float rounding, and far faster than MLX's CPU quantized kernel
(`--native-kernels` uses the quantized kernels instead).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx

from mlx_vlm_port.checkpoint import ModelLoadError, quantization_section, read_json, resolve
from mlx_vlm_port.load import load
from mlx_vlm_port.quant import dequantize_model

from .evaluate import INPUTS, Comparison, compare, make_inputs, run_model
from .stats import Stats, checkpoint_stats

COLUMNS = ["checkpoint", "quantization", "size (MiB)", "bits/weight", "KL mean", "KL p99", "top-1 agree",
           "greedy-{n} agree"]


def describe(folder: Path, stats: Stats) -> str:
    """E.g. "LM 4/6-bit, vision 4-bit, g64" or "float (F32)"."""
    qcfg = quantization_section(read_json(folder / "config.json"))
    if not stats.bits or qcfg is None:
        return "float"
    lm = sorted({b for p, b in stats.bits.items() if p.startswith("language_model.")})
    vision = sorted({b for p, b in stats.bits.items() if not p.startswith("language_model.")})
    text = lambda bits: "/".join(map(str, bits)) + "-bit" if bits else "float"  # noqa: E731
    return f"LM {text(lm)}, vision {text(vision)}, g{qcfg.get('group_size')}"


def evaluate(path: Path, inputs: list[dict], n_tokens: int, native: bool):
    model, _ = load(path, dtype=mx.float32, low_memory=True)  # native: MLX's quantized kernels, not float copies
    if not native:
        dequantize_model(model, mx.float32)
    return run_model(model, inputs, n_tokens)


def row(name: str, folder: Path, cmp: Comparison | None) -> dict:
    stats = checkpoint_stats(folder)
    r = {"checkpoint": name, "quantization": describe(folder, stats), "size (MiB)": f"{stats.file_bytes / 2**20:.1f}",
         "bits/weight": f"{stats.bits_per_weight:.2f}"}
    if cmp is None:
        r.update({"KL mean": "(reference)", "KL p99": "", "top-1 agree": "", "greedy agree": ""})
    else:
        r.update({"KL mean": f"{cmp.kl_mean:.5f}", "KL p99": f"{cmp.kl_p99:.5f}", "top-1 agree": f"{cmp.top1:.1%}",
                  "greedy agree": f"{cmp.greedy:.1%}", "_cmp": cmp})
    return r


def markdown_table(rows: list[dict], columns: list[str], n_tokens: int) -> str:
    names = [c.format(n=n_tokens) for c in columns]
    keys = [c.replace("-{n}", "") for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def build_report(src: str, dsts: list[str], *, n_inputs: int = 4, n_tokens: int = 32, native: bool = False,
                 names: list[str] | None = None, log=sys.stderr) -> tuple[list[dict], str]:
    """Rows (one for SRC, then one per DST) and the Markdown text of the report."""
    src_model, processor = load(src, dtype=mx.float32, low_memory=True)
    dequantize_model(src_model, mx.float32)  # a quantized SRC is compared as the float function it is
    inputs = make_inputs(processor, n_inputs)
    tic = time.perf_counter()
    ref = run_model(src_model, inputs, n_tokens)
    del src_model
    log.write(f"report: SRC evaluated in {time.perf_counter() - tic:.1f}s\n")
    rows = [row(f"SRC {Path(src).name}", resolve(src), None)]
    for i, dst in enumerate(dsts):
        tic = time.perf_counter()
        result = evaluate(resolve(dst), inputs, n_tokens, native)
        name = names[i] if names else Path(dst).name
        rows.append(row(name, resolve(dst), compare(ref, result)))
        log.write(f"report: {name} evaluated in {time.perf_counter() - tic:.1f}s\n")
    sizes = ", ".join(f"{w}x{h} ({int(x['input_ids'].shape[1])} tokens)" for (w, h, _), x in zip(INPUTS, inputs))
    method = "MLX quantized kernels" if native else "quantized weights dequantized to float32"
    text = "\n".join([
        f"# Quantization report: {src}", "",
        markdown_table(rows, COLUMNS, n_tokens), "",
        f"Against SRC in float32 on {len(inputs)} synthetic images + prompts (seeded): {sizes}; "
        f"KL(SRC || DST) of the next-token distributions at all {rows[-1]['_cmp'].positions if dsts else 0} "
        f"prompt positions; top-1 agreement at those positions; greedy continuation of {n_tokens} tokens "
        f"compared position by position. Evaluated with {method}. Bits per weight: tensor bytes × 8 / "
        "weights, scales, biases and float tensors included.", ""])
    return rows, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quantize.report", description=__doc__.split("\n\n")[0])
    p.add_argument("src", metavar="SRC")
    p.add_argument("dsts", metavar="DST", nargs="+")
    p.add_argument("--out", type=Path, help="Markdown file to write (default: quant_report.md next to the first DST)")
    p.add_argument("--inputs", type=int, default=len(INPUTS), choices=range(1, len(INPUTS) + 1),
                   help=f"how many of the {len(INPUTS)} synthetic inputs to use")
    p.add_argument("--tokens", type=int, default=32, help="greedy continuation length (default 32)")
    p.add_argument("--native-kernels", action="store_true", help="run quantized layers with MLX's quantized kernels")
    args = p.parse_args(argv)
    out = args.out or Path(args.dsts[0]).resolve().parent / "quant_report.md"
    try:
        _, text = build_report(args.src, args.dsts, n_inputs=args.inputs, n_tokens=args.tokens,
                               native=args.native_kernels)
    except ModelLoadError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(text)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
