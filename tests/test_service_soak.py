"""300 jobs through the real service: every one answered, and resident memory (and the
thread count) flat between job 50 and job 300."""

from __future__ import annotations

from pathlib import Path

from tests.test_service import Server, caption_request, request

MAX_GROWTH_KB = 2 * 1024


def status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def rss_kb(pid: int) -> int:
    return int(status(pid)["VmRSS"].split()[0])


def test_soak_300_jobs_memory_stays_flat(tiny_path):
    if not Path("/proc/self/status").exists():
        import pytest

        pytest.skip("needs /proc")
    srv = Server(tiny_path)
    try:
        srv.start()
        pid = srv.proc.pid
        seeds = [1, 2, 3, 4, 5]  # a few image sizes, all seen well before job 50
        texts: dict = {}
        for job in range(1, 301):
            seed = seeds[job % len(seeds)]
            replies = request(srv.sock_path, caption_request(seed, max_tokens=2, id=f"soak-{job}"))
            done = replies[-1]
            assert done["type"] == "done" and done["id"] == f"soak-{job}", replies
            assert texts.setdefault(seed, done["text"]) == done["text"]  # greedy: same image, same answer
            if job == 50:
                rss_50, threads_50 = rss_kb(pid), int(status(pid)["Threads"])
        rss_300, threads_300 = rss_kb(pid), int(status(pid)["Threads"])
        print(f"RSS {rss_50} -> {rss_300} kB, threads {threads_50} -> {threads_300}")
        # Measured: 0.4 MB of growth; a worker that keeps every finished job (and its image) adds 5.2 MB.
        assert rss_300 - rss_50 < MAX_GROWTH_KB, f"RSS {rss_50} kB at job 50 → {rss_300} kB at job 300"
        assert threads_300 <= threads_50 + 2  # connection threads end with their connection
        assert srv.wait_log(": done,", 300) == 300
    finally:
        srv.stop()
