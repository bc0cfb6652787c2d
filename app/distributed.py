"""Several processes or Macs started by MLX's launcher (`mlx.launch`, which sets
MLX_RANK): each rank captions every size-th image (by position in the input
list, so a rerun gives each rank the same share) into its own part file next
to --jsonl OUT; once every rank is done, rank 0 merges the parts into OUT in
input order and removes them. A rank that dies leaves its part; a rerun resumes
every part and merges at its end."""

from __future__ import annotations

import os
from pathlib import Path

from .batch import JsonlLog, Source


def group():
    """The distributed group when launched by mlx.launch with more than one rank, else None."""
    if "MLX_RANK" not in os.environ:
        return None
    import mlx.core as mx

    g = mx.distributed.init()
    return g if g.size() > 1 else None


def part_path(out: str | os.PathLike, rank: int, size: int) -> Path:
    return Path(f"{out}.part{rank}of{size}")


def share(sources: list[Source], rank: int, size: int) -> list[Source]:
    return sources[rank::size]


def finish(g, out: str | os.PathLike, sources: list[Source], worst: int) -> int:
    """Wait for every rank (the exchange of exit codes is the barrier); rank 0 merges
    the parts into `out`. The worst exit code of all ranks."""
    import mlx.core as mx

    worst = int(mx.distributed.all_max(mx.array(int(worst), mx.int32), group=g).item())
    if g.rank() == 0:
        merge(out, [part_path(out, r, g.size()) for r in range(g.size())], sources)
    return worst


def merge(out: str | os.PathLike, parts: list[Path], sources: list[Source]) -> None:
    """Append the parts' records that `out` lacks, in the order of `sources`, then remove the parts."""
    records = {}
    for part in parts:  # a line torn by a crash is skipped: that image was redone
        records.update(JsonlLog.records(part))
    log = JsonlLog(out)
    try:
        for source in sources:
            if source.key in records and source.key not in log.done:
                log.write(records[source.key])
    finally:
        log.close()
    for part in parts:
        part.unlink(missing_ok=True)
