"""bench/batch.py: its ours-batch and ours-serial children agree token for token
(on the tiny checkpoint), and the report states ratios from the runs."""

import json
import subprocess
import sys
from pathlib import Path

from bench import batch

ROOT = Path(__file__).resolve().parents[1]


def child(impl: str, model: Path, cache: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.batch", "--impl", impl, "--model", str(model), "--cache",
                           str(cache), "--images", "4", "--new-tokens", "3"], cwd=ROOT, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    line = [ln for ln in done.stdout.decode().splitlines() if ln.startswith(batch.TAG)][-1]
    return json.loads(line[len(batch.TAG):])


def test_batched_and_one_by_one_children_give_the_same_tokens(tiny_path, tmp_path):
    batched, serial = child("ours-batch", tiny_path, tmp_path), child("ours-serial", tiny_path, tmp_path)
    assert batched["token_ids"] == serial["token_ids"] and len(batched["token_ids"]) == 4
    assert all(len(t) == 3 for t in batched["token_ids"])
    assert 0 < batched["prompt_phase_s"] <= batched["seconds"] and batched["images_per_min"] > 0


def test_report_ratios():
    runs = [{"rc": 0, "impl": "ours-batch", "images_per_min": 6.0, "child_maxrss_mb": 1200.0, "seconds": 160.0,
             "prompt_phase_s": 100.0, "token_ids": [[1, 2]]},
            {"rc": 0, "impl": "ours-serial", "images_per_min": 3.0, "child_maxrss_mb": 1000.0, "seconds": 320.0,
             "token_ids": [[1, 2]]},
            {"rc": 0, "impl": "peer-batch", "images_per_min": 4.0, "child_maxrss_mb": 1500.0, "seconds": 240.0}]
    text = batch.report({"batch-f32": {"runs": runs}}, {"model": "cpu"}, {"load_at_start": 1.0})
    assert "| batch-f32 | ours-batch | 6.00 | 1200 | 100.0 | 160.0 | 2.00× | 1.50× | 1.20× |" in text
    assert "give the same tokens" in text
