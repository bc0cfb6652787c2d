"""Memory bandwidth, measured in the benchmark's own run (a child process).

    python -m bench.bandwidth [--mb 512]      # prints one JSON line

- `mlx_linear_read`: float32 x (1 × 1024) @ W.T, W (N × 1024) as nn.Linear
  stores it, on MLX's default device, N chosen so W is `--mb` MB, far larger
  than any cache: the read a decode step does, through the same kernel.
- `numpy_read_2t` (CPU): two threads each summing half of the array (numpy
  releases the GIL), bytes read / time.
- `numpy_matvec` (CPU): the same array as a (N × 1024) float32 matrix times a
  vector in one numpy call (its OpenBLAS sgemv on its own threads): the read a
  decode step's products do on the CPU; here it reads faster than the sums.
- `numpy_copy` (CPU): dst = src; `mlx_copy`: w * 1.0; (bytes read + bytes written) / time.
Best of `--repeats` runs each, GB/s (10^9 bytes). The decode bound uses the
fastest read-only figure (`best_read`): the strictest ceiling measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time


READS = ("mlx_linear_read", "numpy_read_2t", "numpy_read_1t", "numpy_matvec")


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (page faults, thread pools)
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


def mlx_figures(mb: int, repeats: int) -> dict:
    import mlx.core as mx

    rows = mb * 2**20 // (4 * 1024)
    w = mx.random.normal((rows, 1024), dtype=mx.float32)
    x = mx.random.normal((1, 1024), dtype=mx.float32)
    mx.eval(w, x)
    nbytes = w.nbytes

    def matvec():
        mx.eval(x @ w.T)

    return {"mlx_linear_read": nbytes / _best(matvec, repeats) / 1e9,
            "mlx_copy": 2 * nbytes / _best(lambda: mx.eval(w * 1.0), repeats) / 1e9,
            "device": str(mx.default_device())}


def numpy_figures(mb: int, repeats: int) -> dict:
    import numpy as np

    a = np.ones(mb * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    halves = np.array_split(a, 2)

    def read_2t():
        threads = [threading.Thread(target=np.sum, args=(h,)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    matrix, x, y = a.reshape(-1, 1024), np.ones(1024, np.float32), np.empty(a.size // 1024, np.float32)
    return {"numpy_read_2t": a.nbytes / _best(read_2t, repeats) / 1e9,
            "numpy_read_1t": a.nbytes / _best(lambda: a.sum(), repeats) / 1e9,
            "numpy_matvec": a.nbytes / _best(lambda: np.matmul(matrix, x, out=y), repeats) / 1e9,
            "numpy_copy": 2 * a.nbytes / _best(lambda: np.copyto(b, a), repeats) / 1e9}


def measure(mb: int = 512, repeats: int = 5) -> dict:
    import mlx.core as mx

    out = {"mb": mb}
    out.update(mlx_figures(mb, repeats))
    if mx.default_device() == mx.cpu:
        out.update(numpy_figures(mb, repeats))
    reads = {k: v for k, v in out.items() if k in READS}
    out["best_read_name"] = max(reads, key=reads.get)
    out["best_read"] = reads[out["best_read_name"]]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bandwidth", description="memory bandwidth (GB/s)")
    ap.add_argument("--mb", type=int, default=512, help="array size in MB (default 512)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        import mlx_vlm_port  # noqa: F401  (OpenBLAS before MLX, as in the workers)
    except ImportError:
        pass
    print("BENCH_JSON " + json.dumps(measure(args.mb, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
