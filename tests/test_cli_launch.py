"""`mlx.launch -n 2 -- python -m app.caption DIR --jsonl OUT`: two ranks on this
machine (MLX's ring backend), each captioning its share into a part file, rank 0
merging them into OUT in input order; a rerun resumes the parts."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import synthetic_image
from tests.test_cli import FAST, ROOT, cli

LAUNCH = Path(sys.executable).with_name("mlx.launch")
pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed next to this python")


def launch(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    env["PATH"] = os.pathsep.join([str(LAUNCH.parent), env.get("PATH", "")])  # `python` is this one on every rank
    return subprocess.run([str(LAUNCH), "-n", "2", "--", "python", "-m", "app.caption", *map(str, args)],
                          cwd=ROOT, capture_output=True, timeout=300, env=env)


@pytest.fixture()
def folder(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, (w, h) in enumerate([(320, 240), (90, 300), (256, 256), (500, 120), (200, 200)]):
        synthetic_image(w, h, i).save(folder / f"{i}.png")
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ranks_share_the_folder_and_rank_0_merges(folder, tiny_path, tmp_path):
    out = tmp_path / "out.jsonl"
    done = launch(folder, "--jsonl", out, "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    names = [str(folder / f"{i}.png") for i in range(5)]
    merged = lines(out)
    assert [r["path"] for r in merged] == names
    assert not list(tmp_path.glob("out.jsonl.part*"))  # merged and removed
    alone = cli(folder, "--json", "--model", tiny_path, *FAST)
    assert [r["caption"] for r in merged] == [json.loads(x)["caption"] for x in alone.stdout.decode().splitlines()]
    again = launch(folder, "--jsonl", out, "--model", tiny_path, *FAST)
    assert again.returncode == 0 and lines(out) == merged  # nothing left to do


def test_a_rerun_resumes_the_part_a_dead_rank_left(folder, tiny_path, tmp_path):
    out = tmp_path / "out.jsonl"
    part = tmp_path / "out.jsonl.part1of2"  # rank 1's share: 1.png and 3.png; it wrote one line and a torn one
    kept = {"path": str(folder / "1.png"), "caption": "written before the crash", "model": "m",
            "prompt_tokens": 1, "generation_tokens": 1, "seconds": 0.1}
    part.write_text(json.dumps(kept) + "\n" + '{"path": "' + str(folder / "3.png") + '", "capt')
    done = launch(folder, "--jsonl", out, "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    merged = lines(out)
    assert [r["path"] for r in merged] == [str(folder / f"{i}.png") for i in range(5)]
    assert merged[1] == kept  # resumed, not redone
    assert merged[3]["caption"] != "" and not part.exists()


def test_under_mlx_launch_jsonl_is_required(folder, tiny_path):
    done = launch(folder, "--model", tiny_path, *FAST)
    # (mlx.launch itself exits 0 here: each rank's exit code is in its warning line; the rank
    # that stops first gets 2, and the launcher may end the other before it does)
    assert b"--jsonl OUT" in done.stderr and re.search(rb"rank [01] exited with code 2", done.stderr)
