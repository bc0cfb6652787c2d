"""bench/worker.py and bench/report.py: the decode row against the bandwidth read in
the worker right after its decode, each run by its own reading; bench/llamacpp.py:
the GGUF that llama.cpp decodes holds our language model, and the row comparing with it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import bandwidth, llamacpp, report, worker

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


def test_gguf_holds_the_language_model_under_llama_cpp_names(tiny_path, tmp_path):
    gguf = pytest.importorskip("gguf")  # a dev dependency; the GGUF is only for timing llama.cpp
    import numpy as np
    from safetensors.numpy import load_file

    out = llamacpp.write_gguf(tiny_path, tmp_path / "lm.gguf")
    reader = gguf.GGUFReader(str(out))
    cfg = json.loads((tiny_path / "config.json").read_text())["text_config"]
    fields = {k: v.contents() for k, v in reader.fields.items()}
    assert fields["general.architecture"] == "lfm2"
    assert fields["lfm2.block_count"] == cfg["num_hidden_layers"]
    assert fields["lfm2.attention.head_count_kv"] == [0 if t == "conv" else cfg["num_key_value_heads"]
                                                      for t in cfg["layer_types"]]
    ours = {k: v for k, v in load_file(str(tiny_path / "model.safetensors")).items()
            if k.startswith("model.language_model.")}
    assert fields["lfm2.feed_forward_length"] == ours["model.language_model.layers.0.feed_forward.w1.weight"].shape[0]
    assert len(fields["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert len(tensors) == len(ours)
    conv = 0 if cfg["layer_types"][0] == "conv" else 1
    pairs = {"token_embd.weight": "embed_tokens.weight", "token_embd_norm.weight": "embedding_norm.weight",
             f"blk.{conv}.shortconv.conv.weight": f"layers.{conv}.conv.conv.weight",
             "blk.1.ffn_down.weight": "layers.1.feed_forward.w2.weight"}
    for name, key in pairs.items():
        mine = ours["model.language_model." + key]
        np.testing.assert_array_equal(tensors[name], mine.reshape(mine.shape[0], -1) if mine.ndim == 3 else mine)


def test_llamacpp_row_compares_our_median_decode():
    def run(kind, impl, **kw):
        return {"rc": 0, "kind": kind, "impl": impl, **kw}

    llama = dict(new_tokens=50, depth=281, threads=2)
    conf = {"lm_bytes": 1e9, "runs": [run("worker", "ours", round=1, warm={"decode_tps": 9.0}),
                                      run("cold", "ours", round=1, wall_s=9.0, child_maxrss_mb=900.0),
                                      run("llamacpp", "llama.cpp", round=1, decode_tps=10.0, **llama),
                                      run("worker", "ours", round=2, warm={"decode_tps": 7.0}),
                                      run("llamacpp", "llama.cpp", round=2, decode_tps=11.0, **llama)]}
    text = report.table({"bandwidth": [], "configs": {"f32-512": conf}})
    row = [ln for ln in text.splitlines() if "llama.cpp F32" in ln]
    assert len(row) == 1 and "50 tokens after 281, 2 threads" in row[0]
    assert row[0].endswith("| 8.00 | 10.50 (n=2) | 0.76 (rounds: 0.90, 0.64) | ≥ 0.8× llama.cpp | **MISS** |")
