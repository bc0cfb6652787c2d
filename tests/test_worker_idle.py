"""The worker hands MLX's buffer cache back when it goes idle, not only after a model load."""

from __future__ import annotations

import sys
import threading
import types

from captioning.captioner import Captioner
from menubar.jobs import Request
from menubar.worker import Worker


class FakeMLX(types.ModuleType):
    """mlx.core's cache calls, recording which thread made them and what was running then."""

    def __init__(self):
        super().__init__("mlx.core")
        self.clears: list[tuple[str, str]] = []
        self.state = "?"

    def clear_cache(self):
        self.clears.append((threading.current_thread().name, self.state))

    def clear_streams(self):
        pass


class Model(Captioner):
    """The real Captioner with a three-token fake model behind it."""

    def load(self):
        return self

    def stream(self, image, job):
        for i in range(3):
            yield types.SimpleNamespace(text=str(i), prompt_tokens=1, generation_tokens=i + 1, prompt_seconds=0.0,
                                        finish_reason=None)

    def stream_batch(self, images, jobs, batch_size=None):  # jobs that waited together
        for i in range(3):
            for index in range(len(images)):
                yield index, types.SimpleNamespace(text=str(i), prompt_tokens=1, generation_tokens=i + 1,
                                                   prompt_seconds=0.0, finish_reason="length" if i == 2 else None)


def test_the_cache_is_cleared_on_the_worker_thread_once_the_queue_is_empty(monkeypatch):
    mx = FakeMLX()
    monkeypatch.setitem(sys.modules, "mlx.core", mx)
    worker = Worker("m", factory=Model, warmup=False, log=lambda line: None)
    worker.add_listener(lambda state, detail: setattr(mx, "state", state))
    worker.start()
    try:
        worker.load("m")
        assert worker.wait_idle(10)
        after_load = len(mx.clears)
        replies = []
        jobs = [Request(b"", sink=replies.append) for _ in range(3)]
        for job in jobs:
            assert worker.submit(job)
        assert worker.wait_idle(10)
        assert [r["type"] for r in replies if r["type"] != "piece"] == ["done"] * 3
        idle_clears = mx.clears[after_load:]
        assert idle_clears, "no cache clear after the jobs"
        assert all(name == "caption-worker" and state == "ready" for name, state in idle_clears)
        assert len(idle_clears) <= 3
    finally:
        worker.stop()
