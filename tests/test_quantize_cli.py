"""`python -m quantize` as a command (refusals are one line, exit 2, no traceback)
and `python -m quantize.report` (KL 0 for copies, growing as bits drop)."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_vlm_port import load
from mlx_vlm_port.save import save_checkpoint
from quantize import report
from quantize.convert import convert

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, module: str = "quantize") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def quiet_convert(src, dst, bits, group_size=32, vision_bits=None):
    convert(str(src), dst, bits=bits, group_size=group_size, vision_bits=vision_bits, recipe=None,
            requantize=False, force=False, dtype=None, log=io.StringIO())
    return dst


@pytest.fixture(scope="module")
def quantized(tiny_path, tmp_path_factory):
    return quiet_convert(tiny_path, tmp_path_factory.mktemp("q") / "q4", bits=4)


def test_cli_converts_with_progress_and_summary(tiny_path, tmp_path):
    r = cli(tiny_path, "--bits", "5", "--group-size", "32", "--vision-bits", "8", "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert "quantizing 39 layers [" in r.stderr and "39/39" in r.stderr
    assert "language model: 25 layers 5-bit" in r.stdout and "vision tower + projector: 14 layers 8-bit" in r.stdout
    assert "bits per weight" in r.stdout and "size on disk" in r.stdout
    r = cli(tiny_path, "--bits", "4", "--out", tmp_path / "q", "--force")  # --force overwrites
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["bits"] == 4


def test_cli_requantize(quantized, tmp_path):
    r = cli(quantized, "--bits", "8", "--out", tmp_path / "q8", "--requantize")
    assert r.returncode == 0, r.stderr
    assert "quality loss compounds" in r.stderr


@pytest.mark.parametrize("case", ["already-quantized", "dst-not-empty", "dst-is-file", "dst-is-src", "bad-bits",
                                  "bad-group", "bad-vision-bits", "no-bits", "recipe-conflict", "no-src",
                                  "bad-recipe"])
def test_cli_refusals_are_one_line(case, tiny_path, quantized, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("keep me")
    (tmp_path / "file").write_text("")
    args = {
        "already-quantized": [quantized, "--bits", "4", "--out", tmp_path / "o"],
        "dst-not-empty": [tiny_path, "--bits", "4", "--out", full],
        "dst-is-file": [tiny_path, "--bits", "4", "--out", tmp_path / "file"],
        "dst-is-src": [tiny_path, "--bits", "4", "--out", tiny_path, "--force"],
        "bad-bits": [tiny_path, "--bits", "3", "--out", tmp_path / "o"],
        "bad-group": [tiny_path, "--bits", "4", "--group-size", "48", "--out", tmp_path / "o"],
        "bad-vision-bits": [tiny_path, "--bits", "4", "--vision-bits", "7", "--out", tmp_path / "o"],
        "no-bits": [tiny_path, "--out", tmp_path / "o"],
        "recipe-conflict": [tiny_path, "--bits", "8", "--recipe", "mixed_4_6", "--out", tmp_path / "o"],
        "no-src": [tmp_path / "missing", "--bits", "4", "--out", tmp_path / "o"],
        "bad-recipe": [tiny_path, "--recipe", "mixed_2_6", "--out", tmp_path / "o"],
    }[case]
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("python -m quantize: error: ")
    assert (full / "x.txt").read_text() == "keep me" and not (tmp_path / "o").exists()
    if case == "already-quantized":
        assert "already quantized (4-bit, group 32)" in r.stderr and "--requantize" in r.stderr


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """A random model a bit wider than the tiny one (so that every bit width shows),
    a plain copy, a float re-save, and 8/6/5/4-bit conversions of it."""
    from tests.tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ladder")
    src = make_tiny_checkpoint(root / "src", seed=3, text_overrides={"hidden_size": 128, "block_ff_dim": 384},
                               vision_overrides={"hidden_size": 64, "intermediate_size": 128})
    shutil.copytree(src, root / "copy")
    model, _ = load(src, dtype=mx.float32)
    save_checkpoint(model, json.loads((src / "config.json").read_text()), src, root / "resaved", None)
    dsts = [root / "copy", root / "resaved"] + [quiet_convert(src, root / f"q{b}", b, 64) for b in (8, 6, 5, 4)]
    return src, dsts


def test_report_kl_is_zero_for_copies_and_grows_as_bits_drop(ladder):
    src, dsts = ladder
    rows, text = report.build_report(str(src), [str(d) for d in dsts], log=io.StringIO())
    cmp = {r["checkpoint"]: r["_cmp"] for r in rows[1:]}
    for name in ("copy", "resaved"):
        assert cmp[name].kl_mean == 0 and cmp[name].kl_p99 == 0
        assert cmp[name].top1 == 1 and cmp[name].greedy == 1
    kl = [cmp[f"q{b}"].kl_mean for b in (8, 6, 5, 4)]
    assert 0 < kl[0] < kl[1] < kl[2] < kl[3], kl
    assert cmp["q8"].kl_p99 < cmp["q4"].kl_p99
    assert cmp["q8"].top1 >= cmp["q4"].top1
    assert cmp["q4"].positions > 300  # four images, every prompt position
    assert "| q4 | LM 4-bit, vision 4-bit, g64 |" in text and "greedy-32 agree" in text


def test_report_cli_writes_markdown(ladder, tmp_path):
    src, dsts = ladder
    r = cli(src, dsts[2], dsts[5], "--inputs", "2", "--tokens", "8", module="quantize.report")
    assert r.returncode == 0, r.stderr
    written = dsts[2].parent / "quant_report.md"
    assert written.read_text().strip() == r.stdout.strip()
    assert "| q8 |" in r.stdout and "| q4 |" in r.stdout and "greedy-8 agree" in r.stdout
    r = cli(src, dsts[5], "--out", tmp_path / "r.md", "--tokens", "4", module="quantize.report")
    assert r.returncode == 0 and (tmp_path / "r.md").read_text().startswith("# Quantization report")
