"""Running one piece of CPU work on both cores.

MLX's CPU transcendental ops (exp, tanh, sigmoid) run on one core at ~50 M
elements/s, and MKL runs a one-row matrix product (every decoding step) on one
thread. Two CPU streams, each with its own thread, run two halves at once: the
caller's default stream and a second one. numpy work is split the same way
over two threads (`on_both`: the decoding step's blocks, `numpy_matvec`).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import mlx.core as mx
import numpy as np

_local = threading.local()  # MLX streams belong to the thread that made them


def split_apply(fn, arrays: tuple, axis: int, out_axis: int | None = None) -> mx.array:
    """fn(*arrays), computed on two halves of `arrays` along `axis` on two CPU
    streams and joined along `out_axis` (default: `axis`); one call below 2."""
    n = arrays[0].shape[axis]
    if n < 2:
        return fn(*arrays)
    if not hasattr(_local, "second"):
        _local.second = mx.new_stream(mx.cpu)
    halves = []
    for stream, part in zip((mx.default_stream(mx.cpu), _local.second), (slice(0, n // 2), slice(n // 2, n))):
        index = (slice(None),) * (axis % arrays[0].ndim) + (part,)
        with mx.stream(stream):
            halves.append(fn(*(a[index] for a in arrays)))
    return mx.concatenate(halves, axis=axis if out_axis is None else out_axis)


# numpy's OpenBLAS runs a one-row product on both cores itself, but its threads wait
# for each other by spinning: with one other busy process on a 2-core machine a
# float32 450M decode step went from ~120 to ~300 ms. Two halves, each on one BLAS
# thread (the caller's and a helper's), took ~175 ms there (~5% slower when idle).
@lru_cache(maxsize=1)
def _numpy_blas_local_threads():
    """numpy's OpenBLAS `openblas_set_num_threads_local` (0.3.27+), or None where numpy
    has another BLAS (Accelerate, MKL) or an older OpenBLAS. Despite its name it sets
    the count for the whole process (numpy's 0.3.31 here: one thread's call left
    another's products on one thread), and returns the count it replaced."""
    import ctypes
    import glob
    import os

    for path in glob.glob(os.path.join(os.path.dirname(np.__path__[0]), "numpy.libs", "*openblas*")):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


# Up to this many rows (a decoding batch) a float32 product is faster through numpy,
# each thread computing half of weight @ x, than through MLX's sgemm: 8 rows through
# a 4608×1024 weight 2.9-3.4 ms against 4.7-5.2, 16 rows about even, 32 rows 9-10
# against 6.6-7.1 ms; a 450M batch step of 8 rows in numpy (decode.py) 262 ms
# against MLX's 406, of 16 rows 316 against 393, of 32 rows 754 against 733.
FEW_ROWS = 16


class _Helper:
    """The second thread of `on_both`, running one function at a time. Two plain locks
    hand the work over and back (~60 µs a round trip here, against ~105 µs through a
    ThreadPoolExecutor's future); `turn` keeps callers on other threads in line."""

    def __init__(self):
        self.turn, self.go, self.done = threading.Lock(), threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.job, self.error = None, None
        self.owner = None  # the thread whose halves are running
        self.thread = threading.Thread(target=self._serve, name="cpu-matvec", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            self.go.acquire()
            fn, args = self.job
            try:
                fn(*args)
            except BaseException as e:  # handed to the caller
                self.error = e
            self.done.release()


@lru_cache(maxsize=1)
def _helper() -> _Helper:
    return _Helper()


os.register_at_fork(after_in_child=_helper.cache_clear)  # a forked child has no helper thread


def numpy_matvec(w, x, out) -> None:
    """out (n,) or (n, B) = w (n, k) @ x (k,) or (k, B), float32 numpy arrays, in two
    halves of w's rows on the calling thread and the helper thread, one BLAS thread each."""
    if w.shape[0] < 2:
        np.matmul(w, x, out=out)
        return
    h = w.shape[0] // 2
    on_both(np.matmul, (w[:h], x, out[:h]), (w[h:], x, out[h:]))


def on_both(fn, first: tuple, second: tuple) -> None:
    """fn(*first) on the calling thread while the helper thread runs fn(*second),
    one BLAS thread each (both on the caller where numpy's BLAS can't be told so,
    and when called from within a half)."""
    set_local = _numpy_blas_local_threads()
    helper = None if set_local is None else _helper()
    if helper is None or threading.get_ident() in (helper.thread.ident, helper.owner):
        fn(*first)
        fn(*second)
        return
    with helper.turn:
        helper.owner, helper.job, helper.error = threading.get_ident(), (fn, second), None
        previous = set_local(1)  # for both halves (the count is the process's), and back after both
        helper.go.release()
        try:
            fn(*first)
        finally:
            helper.done.acquire()
            set_local(previous)
            helper.owner = None
        error, helper.error = helper.error, None  # held no longer than needed: it holds the half's frames
        if error is not None:
            raise error
