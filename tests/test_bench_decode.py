"""bench/worker.py and bench/report.py: the decode row against the bandwidth read in
the worker right after its decode, each run by its own reading."""

import json
import subprocess
import sys
from pathlib import Path

from bench import bandwidth, report, worker

ROOT = Path(__file__).resolve().parents[1]


def test_worker_reads_the_bandwidth_after_its_decode(tiny_path):
    done = subprocess.run([sys.executable, "-m", "bench.worker", "--impl", "ours", "--model", str(tiny_path),
                           "--image", "64x48:1", "--warm-image", "64x48:2", "--new-tokens", "3",
                           "--bandwidth-mb", "8"], cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    line = [ln for ln in done.stdout.decode().splitlines() if ln.startswith(worker.TAG)][-1]
    out = json.loads(line[len(worker.TAG):])
    after = out["bandwidth_after"]
    assert out["warm"]["tokens"] == 3 and out["warm"]["decode_tps"] > 0
    assert after["mb"] == 8 and after["best_read_name"] in bandwidth.READS and after["numpy_matvec"] > 0
    assert after["best_read"] == max(after[k] for k in bandwidth.READS)


def test_bound_after_divides_each_run_by_its_own_reading():
    def run(tps, gbs):
        return {"rc": 0, "kind": "worker", "impl": "ours", "warm": {"decode_tps": tps},
                "bandwidth_after": {"best_read": gbs}}

    conf = {"lm_bytes": 2e9, "runs": [run(5.0, 20.0), run(4.0, 10.0), run(6.0, 15.0)]}
    # per run: 5·2/20 = 0.5, 4·2/10 = 0.8, 6·2/15 = 0.8; the start/end bound (24 GB/s → 12 tok/s) is another row
    med = report.medians(conf, bound=12.0)
    assert med["ours", "bound_after"] == (0.8, 3)
    assert med["ours", "bound"] == (5.0 / 12.0, 3)
    results = {"bandwidth": [{"best_read": 24.0}], "configs": {"f32-512": conf}}
    assert "| f32-512 | decode / bound from the bandwidth measured right after it, same process | 80% | — |  | " \
           "≥ 80% of bound | PASS |" in report.table(results)
