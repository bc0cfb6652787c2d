"""The menubar worker answers jobs that wait together as one batch: each gets the
caption it would get alone, streamed to its own sink."""

from __future__ import annotations

import dataclasses
import json

import pytest

from captioning.captioner import Captioner
from captioning.job import Job
from menubar.jobs import Request
from menubar.worker import Worker
from mlx_vlm_port.options import SamplingOptions
from tests.images import synthetic_image


def answer_together(tiny_path, requests: list[Request]) -> list[str]:
    """Queue every request before the worker's thread starts (so they wait together),
    run them, and return the details of its "busy" states (the jobs of each batch)."""
    busy: list[str] = []
    worker = Worker(str(tiny_path), warmup=False, log=lambda line: None)
    worker.add_listener(lambda state, detail: busy.append(detail) if state == "busy" else None)
    worker.load(str(tiny_path))
    for r in requests:
        assert worker.submit(r)
    worker.start()
    try:
        assert worker.wait_idle(300)
    finally:
        worker.stop()
    return busy


def test_waiting_jobs_are_batched_and_each_gets_its_own_caption(tiny_path):
    images = [synthetic_image(w, h, seed=i) for i, (w, h) in enumerate([(320, 240), (90, 300), (512, 512)])]
    greedy = SamplingOptions(temperature=0.0)
    jobs = [Job("Describe this image.", sampling=dataclasses.replace(greedy, max_tokens=6)),
            Job("What is shown?", sampling=dataclasses.replace(greedy, max_tokens=3)),
            Job("Describe this image.", sampling=dataclasses.replace(greedy, max_tokens=5)),
            Job("Describe this image.", sampling=SamplingOptions(temperature=0.5, seed=1, max_tokens=4))]
    pictures = images + [images[0]]
    replies: list[list[dict]] = [[] for _ in jobs]
    requests = [Request(im, job, sink=replies[i].append) for i, (im, job) in enumerate(zip(pictures, jobs))]
    busy = answer_together(tiny_path, requests)
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


def test_a_batched_job_its_client_ends_finishes_as_stop_and_a_schema_job_runs_alone(tiny_path):
    """`enough` (the API's stop strings) ends a batched row as finished, with what was
    streamed so far, while the others run on; a job held to a schema is not batched."""
    images = [synthetic_image(200 + 40 * i, 160, seed=i) for i in range(3)]
    greedy = SamplingOptions(temperature=0.0, max_tokens=8)
    jobs = [Job(sampling=greedy), Job(sampling=greedy), Job(sampling=greedy, json_schema={"type": "object"})]
    replies: list[list[dict]] = [[] for _ in jobs]
    requests = [Request(im, job) for im, job in zip(images, jobs)]

    def first_ends_after_two_pieces(message: dict) -> None:
        replies[0].append(message)
        if sum(m["type"] == "piece" for m in replies[0]) == 2:
            requests[0].enough.set()

    requests[0].sink = first_ends_after_two_pieces
    requests[1].sink, requests[2].sink = replies[1].append, replies[2].append
    busy = answer_together(tiny_path, requests)
    assert busy[0] == f"{requests[0].id}, {requests[1].id}"  # the schema job was not taken into the batch
    pieces = [m["text"] for m in replies[0] if m["type"] == "piece"]
    assert len(pieces) == 2 and replies[0][-1]["type"] == "done"
    assert replies[0][-1]["finish_reason"] == "stop" and replies[0][-1]["text"] == "".join(pieces)
    alone = Captioner(str(tiny_path)).load()
    for image, job, got in zip(images[1:], jobs[1:], replies[1:]):
        assert got[-1]["type"] == "done" and got[-1]["text"] == alone.run(image, job, lambda piece: None).text
    if replies[2][-1]["finish_reason"] == "stop":  # held to its schema even though it came with a batch
        assert isinstance(json.loads(replies[2][-1]["text"]), dict)


def test_a_batch_refuses_jobs_held_to_a_schema(tiny_path):
    """Captioner.stream_batch has no grammar: a job with a json_schema is refused, not answered unheld."""
    job = Job(sampling=SamplingOptions(temperature=0.0, max_tokens=2), json_schema={"type": "object"})
    with pytest.raises(ValueError, match="one at a time"):
        next(Captioner(str(tiny_path)).stream_batch([synthetic_image(64, 64, seed=0)], job))
