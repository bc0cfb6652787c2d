"""Load an optimised BLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links the netlib reference BLAS: its matmuls run
~35× slower than an optimised one. Loading one globally before the first
`import mlx.core` lets MLX resolve `cblas_sgemm` to it. Measured here (2-core
x86-64): Intel MKL (`pip install mkl`, the `mkl` extra) streams decode-sized
matrix-vector products at 18-31 GB/s where Debian's OpenBLAS 0.3.21 manages
4-9 GB/s, with equal large-matmul speed, so MKL is preferred when installed.

MLX_VLM_PORT_BLAS=/path/to/lib.so picks a library; MLX_VLM_PORT_NO_BLAS=1 skips this.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

SYSTEM_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded: str | None = None


def candidates() -> list[str]:
    """Libraries to try, best first: an explicit choice, pip's MKL, system OpenBLAS."""
    if os.environ.get("MLX_VLM_PORT_BLAS"):
        return [os.environ["MLX_VLM_PORT_BLAS"]]
    mkl = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return mkl[:1] + [p for p in SYSTEM_OPENBLAS if os.path.exists(p)]


def _optimised_blas_mapped() -> bool:
    """Whether a BLAS MLX can bind to is mapped: numpy's bundled OpenBLAS does not
    count (its symbols are renamed, scipy_cblas_sgemm64_, so MLX never uses it)."""
    try:
        with open("/proc/self/maps") as f:
            return any(name in line and "scipy_openblas" not in line
                       for line in f for name in ("openblas", "mkl_rt", "blis"))
    except OSError:
        return True  # cannot tell: stay quiet


def preload() -> str | None:
    """Load the first usable library; returns its path (None if none or skipped)."""
    global loaded
    if loaded or not sys.platform.startswith("linux") or os.environ.get("MLX_VLM_PORT_NO_BLAS"):
        return loaded
    if "mlx.core" in sys.modules:  # too late: MLX already bound its BLAS
        if not _optimised_blas_mapped() and candidates():
            import warnings

            warnings.warn("mlx was imported before mlx_vlm_port, so MLX uses its reference BLAS (~35x slower "
                          "matmuls on the CPU): import mlx_vlm_port first, or LD_PRELOAD an optimised BLAS",
                          RuntimeWarning, stacklevel=3)
        return None
    for path in candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded = path
        break
    return loaded
