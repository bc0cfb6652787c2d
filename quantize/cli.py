"""`python -m quantize SRC --bits N --out DST`: argument parsing and one-line errors."""

from __future__ import annotations

import argparse
import sys

from mlx_vlm_port.quant import RECIPES

BITS = (4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line and exit status 2, like every other refusal of this tool (argparse adds the usage).
        self.exit(2, f"{self.prog}: error: {message}\n")


def vision_bits(value: str) -> int:
    """`none` keeps the vision tower and projector in float (0); otherwise 4, 5, 6 or 8."""
    if value.lower() == "none":
        return 0
    if value.isdigit() and int(value) in BITS:
        return int(value)
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from 4, 5, 6, 8, none)")


def build_parser() -> Parser:
    p = Parser(prog="python -m quantize",
               description="Quantize an LFM2-VL or SmolVLM checkpoint (language model, and by default the "
                           "vision tower and projector) into an MLX checkpoint folder that this port and mlx-vlm load.")
    p.add_argument("src", metavar="SRC", help="float checkpoint: a local folder or a hub id")
    p.add_argument("--bits", type=int, choices=BITS, help="bits per weight (not needed with --recipe)")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=64,
                   help="weights sharing one scale and bias (default 64)")
    p.add_argument("--vision-bits", type=vision_bits, default=None, metavar="{4,5,6,8,none}",
                   help="bits for the vision tower and projector (default: as --bits; none: keep float)")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="mixed precision, e.g. mixed_4_6: the layers the model is most sensitive in at 6 bits, "
                        "the rest at 4 (LFM2-VL: embedding, attention projections, first and last layers; "
                        "SmolVLM: embedding, head, v/down projections of a third of the layers)")
    p.add_argument("--out", required=True, metavar="DST", help="output folder")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the float tensors, scales and biases (default: that of SRC)")
    p.add_argument("--requantize", action="store_true",
                   help="accept an already-quantized SRC: dequantize it, then quantize (quality loss compounds)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bits is None and args.recipe is None:
        parser.error("give --bits or --recipe")
    if args.recipe and args.bits is not None and args.bits != RECIPES[args.recipe][0]:
        parser.error(f"--recipe {args.recipe} uses {RECIPES[args.recipe][0]}/{RECIPES[args.recipe][1]} bits; "
                     f"drop --bits {args.bits}")
    from mlx_vlm_port.load import ModelLoadError

    from .convert import QuantizeError, convert

    try:
        convert(args.src, args.out, bits=args.bits, group_size=args.group_size, vision_bits=args.vision_bits,
                recipe=args.recipe, requantize=args.requantize, force=args.force, dtype=args.dtype)
    except (QuantizeError, ModelLoadError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0
