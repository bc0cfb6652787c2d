"""Quantize LFM2-VL and SmolVLM checkpoints (4/5/6/8-bit, mixed recipes, vision tower included)
and measure what it costs.

    python -m quantize SRC --bits 4 --out DST
    python -m quantize.report SRC DST [DST ...]
"""

import mlx_vlm_port  # noqa: F401  (loads an optimised BLAS before anything imports mlx.core)
