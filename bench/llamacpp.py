"""llama.cpp's decode of the same language model, timed by llama.cpp's own llama-bench.

    python -m bench.llamacpp --llama-bench PATH --model DIR --depth 281 --new-tokens 50

The LFM2 language model of the LFM2-VL checkpoint folder DIR is written once as an
F32 GGUF (`DIR.lfm2-f32.gguf` beside it; `gguf` from PyPI), with its tokenizer's
tokens padded to the vocabulary (the random checkpoints' small test tokenizer);
llama-bench then generates `--new-tokens` tokens after `--depth` tokens already in
the context (its `-d`: the prompt our worker prefilled), on as many threads as
there are CPUs, `--repetitions` times. Prints one line, BENCH_JSON {...}, with
llama-bench's tokens/s (mean and each repetition).

llama-bench is built from llama.cpp's sources, e.g. those inside the llama-cpp-python
sdist (the README's figures: 0.3.36, llama.cpp build 0c1e570; cmake and a C++ compiler):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \\
          -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build build --target llama-bench -j    # -> build/bin/llama-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TAG = "BENCH_JSON "


def write_gguf(folder: Path, out: Path) -> Path:
    """The checkpoint's LFM2 language model as an F32 GGUF (llama.cpp's "lfm2" architecture)."""
    import gguf
    import numpy as np
    from safetensors.numpy import safe_open

    config = json.loads((folder / "config.json").read_text())
    cfg = config.get("text_config", config)
    if cfg.get("model_type") != "lfm2":
        raise SystemExit(f"{folder}: the language model is {cfg.get('model_type')!r}, not LFM2")
    n_layers, vocab_size = cfg["num_hidden_layers"], cfg["vocab_size"]
    tmp = out.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "lfm2")
    w.add_name(folder.name)
    w.add_context_length(cfg.get("max_position_embeddings", 128000))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_head_count(cfg["num_attention_heads"])
    # llama.cpp tells conv layers by their zero kv heads
    w.add_head_count_kv([cfg["num_key_value_heads"] if t != "conv" else 0 for t in cfg["layer_types"]])
    w.add_rope_freq_base(cfg.get("rope_theta", 1e6))
    w.add_layer_norm_rms_eps(cfg["norm_eps"])
    w.add_vocab_size(vocab_size)
    w.add_shortconv_l_cache(cfg["conv_L_cache"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok = json.loads((folder / "tokenizer.json").read_text())
    ids = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok.get("added_tokens", [])}}
    text = {i: s for s, i in ids.items()}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("lfm2")
    w.add_token_list([text.get(i, f"[PAD{i}]") for i in range(vocab_size)])
    w.add_token_types([gguf.TokenType.NORMAL if i in text else gguf.TokenType.UNUSED for i in range(vocab_size)])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"].get("merges", [])])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("pad_token_id", w.add_pad_token_id)):
        if cfg.get(key) is not None:
            add(cfg[key])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, n_layers)
    prefix = "model.language_model."
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                if not key.startswith(prefix):
                    continue
                hf = "model." + key[len(prefix):]  # the text model's own names, which gguf maps
                name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise SystemExit(f"{key}: no GGUF name for it")
                v = f.get_tensor(key).astype(np.float32)
                if "conv.conv" in hf:
                    v = v.reshape(v.shape[0], -1)  # (D, 1, K) -> (D, K): llama.cpp's conv is 2-D
                if hf == "model.layers.0.feed_forward.w1.weight":
                    w.add_feed_forward_length(v.shape[0])  # the width the config's adjustment rule gave
                w.add_tensor(name, np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out


def llama_bench(binary: str, model: Path, depth: int, new_tokens: int, repetitions: int, threads: int) -> dict:
    cmd = [binary, "-m", str(model), "-p", "0", "-n", str(new_tokens), "-d", str(depth), "-r", str(repetitions),
           "-t", str(threads), "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    test = json.loads(done.stdout)[-1]
    return {"decode_tps": test["avg_ts"], "samples_tps": test.get("samples_ts"), "depth": test.get("n_depth", depth),
            "new_tokens": test.get("n_gen", new_tokens), "threads": test.get("n_threads", threads),
            "build": test.get("build_commit"), "cpu": test.get("cpu_info"), "command": cmd}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llamacpp", description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench executable")
    ap.add_argument("--model", type=Path, required=True, help="LFM2-VL checkpoint folder (float32)")
    ap.add_argument("--depth", type=int, required=True, help="tokens already in the context (the prompt)")
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    gguf_path = args.model.with_name(args.model.name + ".lfm2-f32.gguf")
    if not gguf_path.exists():
        write_gguf(args.model, gguf_path)
    out = {"impl": "llama.cpp", "gguf": str(gguf_path)}
    out.update(llama_bench(args.llama_bench, gguf_path, args.depth, args.new_tokens, args.repetitions, args.threads))
    print(TAG + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
