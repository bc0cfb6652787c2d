"""The one thread that owns the model: it loads it, warms it up and runs every generation.

MLX streams are per thread, so the load and every generation must happen on
this same long-lived thread; the UI and the service's connection handlers only
`submit` jobs and read the replies the job's sink receives. Jobs that wait
together with the same sampling and image options are answered as one batch
(each still streams to its own sink and gets the caption it would get alone).
"""

from __future__ import annotations

import dataclasses
import gc
import queue
import sys
import threading
import time
from typing import Any, Callable

from captioning.errors import Exit, Failure, classify
from captioning.job import Job
from mlx_vlm_port.options import SamplingOptions
from menubar.jobs import Request

_STOP = object()
MAX_BATCH = 8  # at most this many waiting jobs answered as one batch
WARMUP = Job("Hi", sampling=SamplingOptions(max_tokens=1))
Listener = Callable[[str, str], None]  # (state, detail), called on the worker thread


def _batchable(a: Job, b: Job) -> bool:
    """Jobs one batch can answer: the same sampling (but for max_tokens) and image options,
    and free text (a batch holds no answer to a schema)."""
    return (dataclasses.replace(a.sampling, max_tokens=1) == dataclasses.replace(b.sampling, max_tokens=1)
            and a.image == b.image and a.detail == b.detail and a.json_schema is None is b.json_schema)


def _stderr(line: str) -> None:
    print(f"menubar: {line}", file=sys.stderr, flush=True)


def _captioner(model: str):
    from captioning.captioner import Captioner

    return Captioner(model)


def _warmup_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))


class Worker:
    """States: "idle" (nothing loaded yet), "loading", "ready", "busy", "error" (load failed)."""

    def __init__(self, model: str, *, max_queue: int = 64, factory: Callable[[str], Any] = _captioner,
                 warmup: bool = True, log: Callable[[str], None] = _stderr):
        self.model_id = model  # the model in use (or being loaded first)
        self.max_queue = max_queue
        self.state = "idle"
        self.load_error: str | None = None
        self._factory, self._warmup, self._log = factory, warmup, log
        self._queue: queue.Queue = queue.Queue()  # unbounded: the bound is on caption jobs, below
        self._pending = 0  # caption jobs queued and not yet started
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._captioner = None
        self._current: Request | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="caption-worker", daemon=True)

    # --- called from any thread -------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def load(self, model: str) -> None:
        """Queue a switch to `model` (jobs queued before it still run on the old one)."""
        self._queue.put(("load", model))

    def submit(self, job: Request) -> bool:
        """Queue a caption request; False (and nothing queued) when `max_queue` already wait."""
        with self._lock:
            if self._pending >= self.max_queue or self._stopping.is_set():
                return False
            self._pending += 1
        self._queue.put(job)
        return True

    @property
    def queued(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout: float) -> bool:
        """True once everything queued so far has been handled."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Abandon the running job, answer the queued ones with an error, end the thread."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancelled.set()
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- the worker thread -------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # MLX requires its per-thread streams to be destroyed by the thread that made them;
            # left to process exit, teardown aborts intermittently ("terminate called…", exit 134).
            self._captioner = None
            gc.collect()
            _clear_mlx_streams()

    def _loop(self) -> None:
        held = None  # an item taken while gathering a batch that could not join it: next in line
        while True:
            item = held if held is not None else self._queue.get()
            held, items = None, [item]
            try:
                if item is _STOP:
                    return
                if isinstance(item, tuple):
                    if not self._stopping.is_set():
                        self._load(item[1])
                    continue
                while len(items) < MAX_BATCH:  # jobs already waiting with the same settings join this one
                    try:
                        waiting = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(waiting, Request) and _batchable(item.job, waiting.job):
                        items.append(waiting)
                    else:
                        held = waiting
                        break
                with self._lock:
                    self._pending -= len(items)
                live = [r for r in items if not r.cancelled.is_set()]  # not those whose client went away
                if self._stopping.is_set():
                    for r in items:
                        self._emit(r, {"type": "error", "code": Exit.MODEL, "message": "the caption service stopped"})
                elif len(live) == 1:
                    self._caption(live[0])
                elif live:
                    self._caption_batch(live)
            except Exception as e:  # the worker must outlive any one job
                self._log(f"worker: unexpected {type(e).__name__}: {e}")
            finally:
                for _ in items:
                    self._queue.task_done()

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == "busy" == self.state:
            return  # back-to-back jobs: one "busy" is enough for the icon
        self.state = state
        for listener in list(self._listeners):
            try:
                listener(state, detail)
            except Exception as e:
                self._log(f"state listener failed: {type(e).__name__}: {e}")

    def _load(self, model: str) -> None:
        self._set_state("loading", model)
        tic = time.perf_counter()
        try:
            new = self._factory(model)
            new.load()
        except Exception as e:  # Captioner.load words its Failure; anything else is a bug
            self.load_error = e.message if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
            self._log(f"cannot load {model}: {self.load_error}")
            self._set_state("error", self.load_error)
            if self._captioner is not None:  # keep answering with the model we had
                self._set_state("ready", self.model_id)
            return
        old, self._captioner, self.model_id, self.load_error = self._captioner, new, model, None
        del old  # free the previous weights before the warm-up allocates
        gc.collect()
        _clear_mlx_cache()
        if self._warmup:
            try:  # one token, so kernels are built and the first real caption is fast
                warm = new.run(_warmup_image(), WARMUP, lambda piece: None)
                self._log(f"warm-up: {warm.generation_tokens} token in {warm.seconds:.2f}s")
            except Exception as e:
                self._log(f"warm-up failed (ignored): {type(e).__name__}: {e}")
        self._log(f"model {model} ready in {time.perf_counter() - tic:.1f}s")
        self._set_state("ready", model)

    def _caption(self, request: Request) -> None:
        if self._captioner is None:
            why = self.load_error or "no model is loaded"
            self._emit(request, {"type": "error", "code": Exit.MODEL, "message": f"model unavailable: {why}"})
            return
        self._current = request
        self._set_state("busy", str(request.id))
        try:
            result = self._captioner.run(
                request.image, request.job, lambda text: self._emit(request, {"type": "piece", "text": text}),
                cancelled=lambda: request.cancelled.is_set() or self._stopping.is_set(),
                enough=request.enough.is_set)
            self._done(request, result.text, result.prompt_tokens, result.generation_tokens, result.finish_reason,
                       result.seconds)
        except Failure as e:
            self._emit(request, {"type": "error", "code": e.code, "message": e.message})
        finally:
            self._ended()

    def _caption_batch(self, requests: list[Request]) -> None:
        """Jobs that waited together, decoded as one batch; each streams and finishes on its own."""
        if self._captioner is None:
            for r in requests:
                self._caption(r)  # answers "model unavailable"
            return
        self._current = requests[0]
        self._set_state("busy", ", ".join(str(r.id) for r in requests))
        tic, pieces, open_ = time.perf_counter(), {i: [] for i in range(len(requests))}, set(range(len(requests)))
        rows = self._captioner.stream_batch([r.image for r in requests], [r.job for r in requests])
        try:
            for index, response in rows:
                request = requests[index]
                if self._stopping.is_set():
                    raise Failure(Exit.MODEL, "cancelled")
                if index not in open_:  # answered already (cancelled, or ended by its client): runs out unheard
                    continue
                if request.cancelled.is_set():  # its client went away
                    open_.discard(index)
                else:
                    enough = request.enough.is_set()  # its client has what it needs (a stop string): finished
                    if response.text and not enough:
                        pieces[index].append(response.text)
                        self._emit(request, {"type": "piece", "text": response.text})
                    reason = "stop" if enough else response.finish_reason
                    if reason is not None:
                        open_.discard(index)
                        self._done(request, "".join(pieces[index]), response.prompt_tokens,
                                   response.generation_tokens, reason, time.perf_counter() - tic)
                if not open_:
                    break
        except Exception as e:
            failure = classify(e)
            for index in open_:
                self._emit(requests[index], {"type": "error", "code": failure.code, "message": failure.message})
        finally:
            rows.close()  # an abandoned generator releases its caches now
            self._ended()

    def _done(self, request: Request, text: str, prompt_tokens: int, generation_tokens: int,
              finish_reason: str | None, seconds: float) -> None:
        self._emit(request, {"type": "done", "text": text, "model": self.model_id, "prompt_tokens": prompt_tokens,
                             "generation_tokens": generation_tokens, "finish_reason": finish_reason,
                             "seconds": round(seconds, 4)})

    def _ended(self) -> None:
        """A job or a batch is over: when nothing waits, idle."""
        self._current = None
        if self._pending == 0:
            self._set_state("ready", self.model_id)
            _clear_mlx_cache()  # idle: hand the generation's GPU buffers back to the system

    def _emit(self, request: Request, message: dict) -> None:
        try:
            request.sink({"id": request.id, **message})
        except Exception as e:
            self._log(f"job {request.id}: reply sink failed: {type(e).__name__}: {e}")


def _clear_mlx_streams() -> None:
    if "mlx.core" not in sys.modules:  # this thread never touched MLX (e.g. a fake model in tests)
        return
    try:
        sys.modules["mlx.core"].clear_streams()
    except Exception:
        pass


def _clear_mlx_cache() -> None:
    if "mlx.core" not in sys.modules:
        return
    try:
        sys.modules["mlx.core"].clear_cache()
    except Exception:
        pass
