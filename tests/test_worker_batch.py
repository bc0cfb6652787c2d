"""The menubar worker answers jobs that wait together as one batch: each gets the
caption it would get alone, streamed to its own sink."""

from __future__ import annotations

import dataclasses

from captioning.captioner import Captioner
from captioning.job import Job
from menubar.jobs import Request
from menubar.worker import Worker
from mlx_vlm_port.options import SamplingOptions
from tests.images import synthetic_image


def test_waiting_jobs_are_batched_and_each_gets_its_own_caption(tiny_path):
    images = [synthetic_image(w, h, seed=i) for i, (w, h) in enumerate([(320, 240), (90, 300), (512, 512)])]
    greedy = SamplingOptions(temperature=0.0)
    jobs = [Job("Describe this image.", sampling=dataclasses.replace(greedy, max_tokens=6)),
            Job("What is shown?", sampling=dataclasses.replace(greedy, max_tokens=3)),
            Job("Describe this image.", sampling=dataclasses.replace(greedy, max_tokens=5)),
            Job("Describe this image.", sampling=SamplingOptions(temperature=0.5, seed=1, max_tokens=4))]
    pictures = images + [images[0]]
    replies: list[list[dict]] = [[] for _ in jobs]
    busy: list[str] = []
    worker = Worker(str(tiny_path), warmup=False, log=lambda line: None)
    worker.add_listener(lambda state, detail: busy.append(detail) if state == "busy" else None)
    worker.load(str(tiny_path))
    requests = [Request(im, job, sink=replies[i].append) for i, (im, job) in enumerate(zip(pictures, jobs))]
    for r in requests:  # all queued before the thread starts: they wait together
        assert worker.submit(r)
    worker.start()
    try:
        assert worker.wait_idle(300)
    finally:
        worker.stop()
    # the three greedy jobs in one batch (state "busy" names them); the sampled one alone
    assert busy[0] == ", ".join(str(r.id) for r in requests[:3])
    alone = Captioner(str(tiny_path)).load()
    for image, job, got in zip(pictures, jobs, replies):
        done = [m for m in got if m["type"] == "done"]
        assert len(done) == 1 and got[-1] is done[0], got
        want = alone.run(image, job, lambda piece: None)
        assert done[0]["text"] == want.text
        assert "".join(m["text"] for m in got if m["type"] == "piece") == want.text
        assert done[0]["generation_tokens"] == want.generation_tokens
