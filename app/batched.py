"""Many images through the in-process model, decoded in batches
(Captioner.stream_batch): each image is read when a batch slot opens for it,
results are printed and logged in the order of the inputs, and on Ctrl-C every
caption already finished is still logged (out of turn), so a rerun redoes only
the unfinished ones."""

from __future__ import annotations

import time

from captioning.captioner import Captioner
from captioning.errors import Exit, Failure, classify
from captioning.images import read_image
from captioning.job import Job, Result

from .batch import JsonlLog, Progress, Source
from .output import Output, record_of, say


def caption_batched(captioner: Captioner, sources: list[Source], job: Job, batch_size: int | None,
                    out: Output, log: JsonlLog | None, progress: Progress) -> int:
    """Caption `sources` in batches of `batch_size` (None: automatic); the worst exit code."""
    worst = Exit.OK
    finished: dict[int, dict | Failure] = {}  # position in `sources` → its record or failure, until its turn
    rows: list[int] = []  # batch row index → position in `sources`
    started: dict[int, float] = {}
    pieces: dict[int, list[str]] = {}
    turn = 0

    def readable():
        for position, source in enumerate(sources):
            try:
                if source.error:
                    raise Failure(source.code, source.error)
                image = read_image(source.label, path=source.path, data=source.data)
            except Failure as e:
                finished[position] = e
                continue
            progress.step(source.label)
            rows.append(position)
            started[position] = time.perf_counter()
            yield image

    def flush() -> None:
        nonlocal turn, worst
        while turn in finished:
            item, source = finished.pop(turn), sources[turn]
            if isinstance(item, Failure):
                say(item.message)
                worst = max(worst, item.code)
            else:
                out.show(item, source)
                if log:
                    log.write({**item, "path": source.key})
            turn += 1
            progress.advance()

    try:
        for index, response in captioner.stream_batch(readable(), job, batch_size):
            position = rows[index]
            pieces.setdefault(position, []).append(response.text)
            if response.finish_reason is None:
                continue
            finished[position] = record_of(sources[position], Result(
                "".join(pieces.pop(position)), captioner.model_id, response.prompt_tokens,
                response.generation_tokens, time.perf_counter() - started[position], response.finish_reason))
            flush()
        flush()
    except Failure:
        raise
    except Exception as e:
        raise classify(e) from e
    finally:
        if log:  # interrupted or failed: keep what is finished but not yet in its turn
            for position, item in sorted(finished.items()):
                if isinstance(item, dict):
                    log.write({**item, "path": sources[position].key})
    return int(worst)
