"""Load an optimised BLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links the netlib reference BLAS; its matmuls run
~35× slower than OpenBLAS. Loading a system OpenBLAS globally before the first
`import mlx.core` lets MLX resolve `cblas_sgemm` to it.
Set MLX_VLM_PORT_NO_BLAS=1 to skip this.
"""

from __future__ import annotations

import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded: str | None = None


def preload() -> str | None:
    """Load the first system OpenBLAS found; returns its path (None if none or skipped)."""
    global loaded
    if loaded or not sys.platform.startswith("linux") or os.environ.get("MLX_VLM_PORT_NO_BLAS"):
        return loaded
    if "mlx.core" in sys.modules:
        return None  # too late: MLX already bound its BLAS
    for path in CANDIDATES:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded = path
            break
    return loaded
