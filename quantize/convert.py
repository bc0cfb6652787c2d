"""Float checkpoint (LFM2-VL or SmolVLM) → quantized checkpoint folder (mlx-vlm layout)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import mlx.core as mx

from mlx_vlm_port.checkpoint import Checkpoint, ModelLoadError, describe_quantization
from mlx_vlm_port.load import build_model
from mlx_vlm_port.quant import RECIPES, Plan, apply_plan, dequantize_model, plan_quantization
from mlx_vlm_port.save import save_checkpoint

from .progress import Progress
from .stats import Stats, checkpoint_stats, dominant_float_dtype, read_tensors

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
STORED = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}


class QuantizeError(Exception):
    """A problem with the user's request; the message is one line, shown without a traceback."""


def check_destination(dst: Path, src: Path, force: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise QuantizeError(f"--out {dst}: exists and is not a folder")
    if dst.exists() and dst.resolve() == src.resolve():
        raise QuantizeError(f"--out {dst}: is the source checkpoint itself; choose another folder")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise QuantizeError(f"--out {dst}: folder is not empty; pass --force to overwrite it")
    try:  # now rather than after minutes of quantizing
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QuantizeError(f"--out {dst}: cannot create the folder ({e.strerror or e})") from None


def count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def summary(plan: Plan, stats: Stats, src: str, dst: Path, files: int) -> list[str]:
    lines = [f"Quantized {src} -> {dst} (affine, group size {plan.group_size}"
             + (f", recipe {plan.recipe})" if plan.recipe else ")")]
    for label, vision in (("language model", False), ("vision tower + projector", True)):
        chosen = [c for c in plan.layers if c.vision == vision]
        by_bits: dict[int, list] = {}
        for c in chosen:
            if c.bits is not None:
                by_bits.setdefault(c.bits, []).append(c)
        parts = [f"{len(cs)} layers {b}-bit ({count(sum(c.weights for c in cs))} weights)"
                 for b, cs in sorted(by_bits.items())]
        floats = sum(c.bits is None for c in chosen)
        lines.append(f"  {label}: " + (", ".join(parts) or "nothing quantized")
                     + (f"; {floats} kept in float" if floats else ""))
    reasons: dict[str, list] = {}
    for c in plan.kept_float:
        reasons.setdefault(c.why_float, []).append(c)
    for why, cs in reasons.items():
        names = ", ".join(f"{c.path} (in {c.shape[1]})" for c in cs[:6])
        more = f" and {len(cs) - 6} more" if len(cs) > 6 else ""
        lines.append(f"  kept in float ({why}): {len(cs)} layers: {names}{more}")
    lines.append("  always float: " + ", ".join(("norms", "conv kernels") + plan.always_float))
    lines.append(f"  bits per weight (from the saved bytes, scales and biases included): "
                 f"{stats.quantized_bits_per_weight:.3f} over the quantized layers, "
                 f"{stats.bits_per_weight:.3f} over the whole checkpoint")
    if plan.recipe:
        low, high = RECIPES[plan.recipe]
        n_high = sum(c.bits == high for c in plan.layers)
        lines.append(f"  recipe {plan.recipe}: the {n_high} layers the model is most sensitive in at {high} bits, "
                     f"the rest at {low}: average {stats.quantized_bits_per_weight:.3f} bits per quantized weight")
    lines.append(f"  size on disk: {stats.file_bytes / 2**20:.1f} MiB ({files} weight file{'s' * (files > 1)})")
    return lines


def convert(src: str, dst: str | Path, *, bits: int | None, group_size: int, vision_bits: int | None,
            recipe: str | None, requantize: bool, force: bool, dtype: str | None,
            log: TextIO | None = None) -> tuple[Plan, Stats]:
    """Quantize `src` into the folder `dst`; prints progress on `log` (stderr) and the summary on stdout."""
    log = log if log is not None else sys.stderr
    dst = Path(dst)
    try:
        checkpoint = Checkpoint.open(src)
        tensors = read_tensors(checkpoint.path)
    except ModelLoadError as e:
        raise QuantizeError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise QuantizeError(f"{src}: cannot read the checkpoint's config.json / safetensors headers ({e})") from None
    path, qcfg = checkpoint.path, checkpoint.quantization
    has_scales = any(name.endswith(".scales") for name in tensors)
    already = bool(qcfg) or has_scales
    if already and not requantize:
        raise QuantizeError(f"{src} is already quantized ({describe_quantization(qcfg, has_scales)}); "
                            "quantize the float checkpoint instead, or pass --requantize to dequantize it "
                            "first (the rounding errors of both passes add up)")
    check_destination(dst, path, force)
    stored = dominant_float_dtype(path)
    dtype = dtype or STORED.get(stored or "F32", "float32")
    try:
        model = build_model(checkpoint, dtype=DTYPES[dtype], low_memory=True)  # no float copies: it is saved, not run
    except ModelLoadError as e:
        raise QuantizeError(str(e)) from None
    if already:
        n = dequantize_model(model, DTYPES[dtype])
        log.write(f"warning: {src} was quantized ({describe_quantization(qcfg, has_scales)}); dequantized {n} "
                  "layers and quantizing again: the quality loss compounds\n")
    try:
        plan = plan_quantization(model, bits=bits, group_size=group_size, vision_bits=vision_bits, recipe=recipe)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    apply_plan(model, plan, Progress(f"quantizing {len(plan.quantized)} layers", log))
    try:
        files = save_checkpoint(model, checkpoint.config, path, dst, plan.config())
    except OSError as e:
        raise QuantizeError(f"--out {dst}: cannot write ({e.strerror or e})") from None
    stats = checkpoint_stats(dst)
    print("\n".join(summary(plan, stats, str(src), dst, len(files))))
    return plan, stats
