"""Where our time goes: load, processor, vision encoder (per view, per layer part),
projector, LM prefill, decode (per token and per part), and the matvec kernels.

    python -m bench.profile --model DIR --image IMG [--tokens 20]

Stages are timed with an mx.eval between them (so a stage's figure excludes the
overlap MLX would otherwise get); the sums agree with an unsynchronised run to
a few percent. Prints a readable report and one BENCH_JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import mlx_vlm_port  # noqa: F401  (the BLAS before MLX)
import mlx_vlm_port._blas
import mlx.core as mx
import numpy as np

T = defaultdict(float)


def timed(key, fn, *args):
    tic = time.perf_counter()
    out = fn(*args)
    mx.eval(out)
    T[key] += time.perf_counter() - tic
    return out


def vision(model, inputs):
    """The model's own modules, one view at a time (per-view figures)."""
    vt = model.vision_tower
    shapes = [tuple(s) for s in np.asarray(inputs["spatial_shapes"]).tolist()]
    feats = []
    for i, shape in enumerate(shapes):
        n = shape[0] * shape[1]
        x = inputs["pixel_values"][i: i + 1, :n]
        x = timed("vision.embeddings", vt.embeddings, x, shape)
        for layer in vt.encoder.layers:
            h = timed("vision.layernorm", layer.layer_norm1, x)
            x = x + timed("vision.attention (module)", layer.self_attn, h)
            h = timed("vision.layernorm", layer.layer_norm2, x)
            x = x + timed("vision.mlp (module)", layer.mlp, h)
        x = timed("vision.post_layernorm", vt.post_layernorm, x)
        feats.append(timed("projector", model.multi_modal_projector, x[0], shape))
    return mx.concatenate(feats), shapes


def vision_parts(model, shape, reps=3):
    """Layer 0's attention and MLP split into their matmuls and the rest (softmax,
    GELU, reshapes), best of `reps`, × the number of layers: one view of `shape`."""
    layer, n = model.vision_tower.encoder.layers[0], len(model.vision_tower.encoder.layers)
    d = layer.self_attn.q_proj.weight.shape[0]
    x = mx.random.normal((1, shape[0] * shape[1], d))
    h1 = mx.random.normal((1, shape[0] * shape[1], layer.mlp.fc1.weight.shape[0]))
    mx.eval(x, h1)
    a, m = layer.self_attn, layer.mlp
    parts = {"attention (module)": lambda: a(x), "q,k,v projections": lambda: [a.q_proj(x), a.k_proj(x), a.v_proj(x)],
             "out projection": lambda: a.out_proj(x), "mlp (module)": lambda: m(x), "fc1": lambda: m.fc1(x),
             "fc2": lambda: m.fc2(h1)}
    t = {k: min(_once(f) for _ in range(reps)) * n for k, f in parts.items()}
    t["attention: rest (QK^T, softmax, PV)"] = t["attention (module)"] - t["q,k,v projections"] - t["out projection"]
    t["mlp: rest (GELU-tanh)"] = t["mlp (module)"] - t["fc1"] - t["fc2"]
    return t


def lm_pass(model, h, cache, prefix):
    lm = model.language_model.model
    for layer, c in zip(lm.layers, cache):
        op = layer.self_attn if layer.is_attention else layer.conv
        kind = "attn" if layer.is_attention else "conv"
        h = h + timed(f"{prefix}.{kind}_op", lambda: op(layer.operator_norm(h), c))
        hn = layer.ffn_norm(h)
        h = h + timed(f"{prefix}.ffn (module: w1, w3, silu, w2)", layer.feed_forward, hn)
    return timed(f"{prefix}.final_norm", lm.embedding_norm, h)


def matvec_kernels():
    out = {}
    for name, (n, k) in {"head 65536x1024": (65536, 1024), "ffn w1/w3 4608x1024": (4608, 1024),
                         "ffn w2 1024x4608": (1024, 4608), "conv in_proj 3072x1024": (3072, 1024)}.items():
        w = mx.random.normal((n, k))
        x = mx.random.normal((1, k))
        mx.eval(w, x)
        for label, fn in (("x @ W.T (nn.Linear)", lambda: x @ w.T), ("(W @ x.T).T", lambda: (w @ x.T).T)):
            mx.eval(fn())
            best = min(_once(fn) for _ in range(5))
            out[f"{name}: {label}"] = {"ms": best * 1e3, "GB/s": w.nbytes / best / 1e9}
    return out


def _once(fn):
    tic = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - tic


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--tokens", type=int, default=20, help="decode steps to time (default 20)")
    args = ap.parse_args(argv)
    from mlx_vlm_port import load

    tic = time.perf_counter()
    model, processor = load(args.model)
    load_s = time.perf_counter() - tic
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    for rep in range(2):  # the second pass is reported (warm)
        T.clear()
        tic = time.perf_counter()
        inputs = processor(prompt, [args.image])
        mx.eval(inputs)
        T["processor"] = time.perf_counter() - tic
        feats, shapes = vision(model, inputs)
        n_views = len(shapes)
        ids = inputs["input_ids"]
        emb = model.language_model.model.embed_tokens(ids)
        pos = mx.array(np.flatnonzero(np.asarray(ids[0]) == model.config.image_token_id))
        emb[0, pos] = feats
        cache = model.language_model.make_cache()
        for s in range(0, emb.shape[1] - 1, 512):  # as generate.prefill
            lm_pass(model, emb[:, s: min(s + 512, emb.shape[1] - 1)], cache, "prefill")
        h = lm_pass(model, emb[:, -1:], cache, "prefill")
        y = timed("prefill.head", lambda: mx.argmax(model.language_model.head(h)[:, -1], -1))
        steps = args.tokens if rep else 2
        for _ in range(steps):
            h = lm_pass(model, model.language_model.model.embed_tokens(y[None]), cache, "decode")
            y = timed("decode.head (tied embedding, 65536x1024)",
                      lambda: mx.argmax(model.language_model.head(h)[:, -1], -1))
    # the unsynchronised decode rate, as generate.py runs it
    tic = time.perf_counter()
    for _ in range(steps):
        y = mx.argmax(model.language_model(model.language_model.model.embed_tokens(y[None]), cache)[:, -1], -1)
        mx.async_eval(y)
    mx.eval(y)
    plain = steps / (time.perf_counter() - tic)
    total = {p: sum(v for k, v in T.items() if k.startswith(p)) for p in ("vision", "projector", "prefill", "decode")}
    print(f"BLAS {mlx_vlm_port._blas.loaded}")
    print(f"prompt tokens {ids.shape[1]}, views {n_views}; load {load_s:.2f} s, "
          f"processor {T['processor']:.3f} s")
    print(f"vision {total['vision']:.2f} s ({total['vision'] / n_views:.2f} s per view), projector "
          f"{total['projector']:.3f} s, prefill {total['prefill']:.2f} s, decode {total['decode'] / steps * 1e3:.0f} ms/token "
          f"(synchronised), {plain:.2f} tok/s unsynchronised")
    for k, v in sorted(T.items(), key=lambda kv: -kv[1]):
        per = f"{v / steps * 1e3:.1f} ms/token" if k.startswith("decode") else f"{v:.3f} s"
        print(f"  {k:<48} {per}")
    parts = vision_parts(model, shapes[0])
    print(f"  vision, split by part (layer 0 × {len(model.vision_tower.encoder.layers)}, one {shapes[0]} view):")
    for k, v in parts.items():
        print(f"    {k:<46} {v:.3f} s")
    kernels = matvec_kernels()
    for k, v in kernels.items():
        print(f"  matvec {k:<52} {v['ms']:.2f} ms  {v['GB/s']:.1f} GB/s")
    print("BENCH_JSON " + json.dumps({"load_s": load_s, "stages": T, "totals": total, "views": n_views, "decode_steps": steps,
                                      "decode_tps_unsync": plain, "matvec": kernels,
                                      "vision_parts": parts, "blas": mlx_vlm_port._blas.loaded}))


if __name__ == "__main__":
    main()
