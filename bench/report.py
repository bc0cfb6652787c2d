"""bench/RESULTS.md from the measurements: medians, ours/peer ratios, targets, raw rounds."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

# (config prefix, metric) -> (kind, value); kind "ratio_le": ours/peer ≤ v, "ratio_ge": ours/peer ≥ v,
# "abs_le": ours ≤ v, "bound_ge": ours ≥ v of the bandwidth bound. Prefix "*" = every configuration.
TARGETS = {
    ("*", "cold"): ("ratio_le", 0.35), ("*", "import"): ("abs_le", 0.5),
    ("f32", "ttft"): ("ratio_le", 0.7), ("q8", "ttft"): ("ratio_le", 0.7), ("q4", "ttft"): ("ratio_le", 0.2),
    ("f32", "decode"): ("ratio_ge", 1.1), ("q4", "decode"): ("ratio_ge", 1.0),
    ("f32", "bound"): ("bound_ge", 0.8), ("f32", "bound_after"): ("bound_ge", 0.8), ("*", "rss"): ("ratio_le", 0.8),
}
LLAMACPP_DECODE = 0.8  # ours float32 decode against llama.cpp's F32 on the same machine
QUANTIZED_VS_FLOAT = 1.0  # ours: a quantized checkpoint decodes at least as fast as its float32 form
METRICS = [  # key, label, unit format
    ("cold", "cold start: CLI spawn → exit after 1 token (s)", "{:.2f}"),
    ("import", "import of the CLI path (s)", "{:.2f}"),
    ("load", "load (s)", "{:.2f}"),
    ("first", "time to first token, first request in process (s)", "{:.2f}"),
    ("ttft", "time to first token, warm (s)", "{:.2f}"),
    ("decode", "decode (tokens/s)", "{:.2f}"),
    ("bound", "decode / bandwidth bound", "{:.0%}"),
    ("bound_after", "decode / bound from the bandwidth measured right after it, same process", "{:.0%}"),
    ("rss", "peak RSS, worker (MB)", "{:.0f}"),
    ("cli_rss", "peak RSS, CLI cold run (MB)", "{:.0f}"),
    ("mlx_peak", "MLX peak allocated memory, worker (GB)", "{:.2f}"),
]


def _value(run: dict, key: str, bound: float | None, lm_bytes: float):
    warm = run.get("warm") or {}
    if run["rc"] != 0:
        return None
    if key == "cold":
        return run["wall_s"] if run["kind"] == "cold" else None
    if key == "cli_rss":
        return run["child_maxrss_mb"] if run["kind"] == "cold" else None
    if run["kind"] != "worker":
        return None
    if key == "bound":
        return warm.get("decode_tps") / bound if bound and warm.get("decode_tps") else None
    if key == "bound_after":
        after = (run.get("bandwidth_after") or {}).get("best_read")
        return warm["decode_tps"] * lm_bytes / (after * 1e9) if after and warm.get("decode_tps") else None
    return {"import": run.get("import_s"), "load": run.get("load_s"), "first": (run.get("first") or {}).get("ttft_s"),
            "ttft": warm.get("ttft_s"), "decode": warm.get("decode_tps"), "rss": run.get("maxrss_mb"),
            "mlx_peak": run.get("mlx_peak_gb")}[key]


def medians(conf: dict, bound: float | None) -> dict:
    out = {}
    for impl in ("ours", "peer"):
        for key, _, _ in METRICS:
            vals = [v for r in conf["runs"] if r["impl"] == impl for v in [_value(r, key, bound, conf["lm_bytes"])]
                    if v is not None]
            out[impl, key] = (statistics.median(vals), len(vals)) if vals else (None, 0)
    return out


def _target(name: str, key: str):
    return TARGETS.get((name.split("-")[0], key)) or TARGETS.get(("*", key))


def _judge(target, ours, peer) -> tuple[str, str]:
    if target is None:
        return "", ""
    kind, v = target
    text = {"ratio_le": f"≤ {v}× peer", "ratio_ge": f"≥ {v}× peer", "abs_le": f"≤ {v} s",
            "bound_ge": f"≥ {v:.0%} of bound"}[kind]
    if ours is None or (kind.startswith("ratio") and peer is None):
        return text, "n/a"
    ok = {"ratio_le": lambda: ours <= v * peer, "ratio_ge": lambda: ours >= v * peer,
          "abs_le": lambda: ours <= v, "bound_ge": lambda: ours >= v}[kind]()
    return text, "PASS" if ok else "**MISS**"


def table(results: dict) -> str:
    bound_gbs = max((b.get("best_read") or 0 for b in results["bandwidth"]), default=0) or None
    rows = ["| config | metric | ours | peer | ours/peer | target | result |", "|---|---|---|---|---|---|---|"]
    for name, conf in results["configs"].items():
        bound = bound_gbs * 1e9 / conf["lm_bytes"] if bound_gbs else None
        med = medians(conf, bound)
        for key, label, fmt in METRICS:
            (ours, n_o), (peer, n_p) = med["ours", key], med["peer", key]
            if ours is None and peer is None:
                continue
            cell = lambda v, n: "—" if v is None else fmt.format(v) + ("" if n >= 3 else f" (n={n})")  # noqa: E731
            ratio = f"{ours / peer:.2f}" if ours is not None and peer else ""
            if key == "bound" and bound:
                label += f" ({bound:.1f} tok/s)"
            text, verdict = _judge(_target(name, key), ours, peer)
            rows.append(f"| {name} | {label} | {cell(ours, n_o)} | {cell(peer, n_p)} | {ratio} | {text} | {verdict} |")
        rows += _llamacpp_row(name, conf, med["ours", "decode"][0])
    return "\n".join(rows)


def _llamacpp_row(name: str, conf: dict, ours: float | None) -> list[str]:
    """Our decode against llama.cpp's (its llama-bench, same language model and depth, same
    rounds): the medians' ratio, judged, and each round's (ours, then llama.cpp right after)."""
    runs = [r for r in conf["runs"] if r["kind"] == "llamacpp" and r["rc"] == 0 and r.get("decode_tps")]
    if not runs:
        return []
    theirs, r = statistics.median(r["decode_tps"] for r in runs), runs[0]
    n = "" if len(runs) >= 3 else f" (n={len(runs)})"
    label = (f"decode (tokens/s) against llama.cpp F32: llama-bench, {r['new_tokens']} tokens after {r['depth']}, "
             f"{r['threads']} threads (its figure in the peer column)")
    ratio = ""
    if ours:
        by_round = {o["round"]: _value(o, "decode", None, conf["lm_bytes"]) for o in conf["runs"]
                    if o["impl"] == "ours" and o["kind"] == "worker"}
        rounds = ", ".join(f"{by_round[lr['round']] / lr['decode_tps']:.2f}" for lr in runs
                           if by_round.get(lr.get("round")))
        ratio = f"{ours / theirs:.2f}" + (f" (rounds: {rounds})" if rounds else "")
    _, verdict = _judge(("ratio_ge", LLAMACPP_DECODE), ours, theirs)
    return [f"| {name} | {label} | {'—' if ours is None else f'{ours:.2f}'} | {theirs:.2f}{n} | {ratio} | "
            f"≥ {LLAMACPP_DECODE}× llama.cpp | {verdict} |"]


def quantized_vs_float(results: dict) -> list[str]:
    """Ours: each quantized configuration's decode against the float32 one at its image size."""
    rows = []
    for name, conf in results["configs"].items():
        kind, _, size = name.partition("-")
        base = results["configs"].get(f"f32-{size}")
        if kind not in ("q4", "q8") or base is None:
            continue
        q, f = medians(conf, None)["ours", "decode"][0], medians(base, None)["ours", "decode"][0]
        if q and f:
            verdict = "PASS" if q >= QUANTIZED_VS_FLOAT * f else "**MISS**"
            rows.append(f"| {name} / f32-{size} | {q:.2f} / {f:.2f} | {q / f:.2f} | ≥ {QUANTIZED_VS_FLOAT} | {verdict} |")
    if not rows:
        return []
    return ["Ours, quantized against float32 decoding (tokens/s). On the CPU a quantized language model decodes "
            "from float32 copies of its weights unless `low_memory`: it reads what the float32 form reads, and "
            "the table's bound for it (packed bytes) is one only a kernel reading the packed weights could near.", "",
            "| configs | decode | ratio | target | result |", "|---|---|---|---|---|", *rows, ""]


def _raw(conf: dict) -> str:
    f = lambda v, p=2: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    rows = ["| round | impl | run | rc | wall s | import s | load s | 1st ttft s | warm ttft s | decode tok/s | "
            "prompt tok | peak RSS MB | read GB/s after | load avg before/after |", "|" + "---|" * 14]
    for r in conf["runs"]:
        w, first = r.get("warm") or {}, r.get("first") or {}
        rows.append(f"| {r['round']} | {r['impl']} | {r['kind']} | {r['rc']} | {f(r['wall_s'])} | {f(r.get('import_s'))} "
                    f"| {f(r.get('load_s'))} | {f(first.get('ttft_s'))} | {f(w.get('ttft_s'))} | "
                    f"{f(w.get('decode_tps') or r.get('decode_tps'))} | "
                    f"{w.get('prompt_tokens', first.get('prompt_tokens', r.get('depth', '')))} | "
                    f"{f(r.get('maxrss_mb') or r['child_maxrss_mb'], 0)} | "
                    f"{f((r.get('bandwidth_after') or {}).get('best_read'), 1)} | "
                    f"{r['load1_before']:.2f} / {r['load1_after']:.2f} |")
    errors = [f"- round {r['round']} {r['impl']} {r['kind']}: `{r['error'][-400:]}`" for r in conf["runs"]
              if r.get("error")]
    return "\n".join(rows + ([""] + errors if errors else []))


def _agreement(conf: dict) -> str:
    seqs = {i: [r["warm"]["token_ids"] for r in conf["runs"] if r["impl"] == i and r.get("warm")] for i in ("ours", "peer")}
    prompts = {i: {r["warm"]["prompt_tokens"] for r in conf["runs"] if r["impl"] == i and r.get("warm")}
               for i in ("ours", "peer")}
    if not seqs["ours"] or not seqs["peer"]:
        return f"prompt tokens {sorted(prompts['ours'] | prompts['peer'])}"
    a, b = seqs["ours"][0], seqs["peer"][0]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"prompt tokens ours {sorted(prompts['ours'])}, peer {sorted(prompts['peer'])}; greedy tokens "
            f"identical for the first {same} of {min(len(a), len(b))}")


DEFINITIONS = """\
- Cold start: wall time from spawning each side's CLI to its exit after one new token
  (interpreter start, imports, load, image processing, vision encoder, prefill, first
  token, exit), the checkpoint file already in the OS page cache.
- Import: in the worker, importing what the CLI path needs before it loads a model
  (ours: `mlx_vlm_port` load/generate, `app.caption`, tokenizers, jinja2, PIL; peer:
  `mlx_vlm.generate`). Load: `load(folder)` until the weights are in memory.
- Time to first token: from the `stream_generate` call (image file decoding, processor,
  vision encoder, projector, prefill) to the first token handed out. First request: the
  first in the process (1 token); warm: the second request, on another image of the
  same size (same prompt length; nothing of the first request can be reused).
- Decode: the warm request, (n − 1) / (time of token n − time of token 1); greedy, no
  repetition penalty, EOS ignored (ours: `ignore_eos=True`; peer: its tokenizer's
  stopping criteria replaced by one that never stops).
- Peak RSS: the child's `ru_maxrss` (worker: load + both requests; CLI: the cold run).
- (n=k): fewer than 3 successful runs went into that median."""


def write_report(results: dict, out: Path) -> str:
    m, tab = results["machine"], table(results)
    worker = next((r for c in results["configs"].values() for r in c["runs"] if r.get("device")), {})
    peer = next((r for c in results["configs"].values() for r in c["runs"] if r.get("mlx_vlm")), {})
    bw = results["bandwidth"]
    lines = [
        "# Benchmarks: mlx-vlm-port against mlx-vlm", "",
        f"Run finished {results.get('finished') or time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"{results['total_min']:.0f} min in all." + (f" Configurations not run: {', '.join(results['not_run'])}."
                                                     if results.get("not_run") else ""), "",
        f"- Machine: {m['model']}, {m['cpus']} CPUs, {m['ram_gb']} GB RAM; MLX device: "
        f"{worker.get('device_name', '?')} ({worker.get('device', '?')}).",
        f"- Python {worker.get('python', '?')}, MLX {worker.get('mlx', '?')}, mlx-vlm {peer.get('mlx_vlm', 'not run')}.",
        f"- BLAS (`--blas {results.get('blas_choice', '?')}`): both sides' children ran with "
        f"`LD_PRELOAD={results.get('ld_preload') or '(none)'}` (ours also with MLX_VLM_PORT_BLAS set to it), "
        "so ours and the peer use the same BLAS; libraries mapped in a worker: "
        f"{', '.join(worker.get('blas_mapped') or []) or '?'}.",
        f"- Load average (1 min): {results['quiet'].get('load_at_start')} at the start"
        + (f" after waiting {results['quiet']['waited_min']} min for < {results['quiet']['limit']}"
           + (" (gave up waiting)" if results['quiet'].get('gave_up') else "") if "limit" in results["quiet"] else "")
        + f", {results.get('load_at_end')} at the end; each run's is in the raw numbers (the benchmark's "
        "own two busy threads make about 2).",
    ] + [f"- {n}" for n in results.get("notes", [])] + [
        "", "## Command", "", "```sh", " ".join(results["argv"]), "```", "",
        "Each round runs, each in a fresh process and alternating ours / peer:", "",
    ]
    for name, conf in results["configs"].items():
        lines.append(f"- {name}:")
        lines += [f"  - `{cmd}`" for cmd in conf["commands"].values()]
    lines += ["", "## Results (medians over rounds)", "", tab, "", *quantized_vs_float(results), DEFINITIONS, "",
              "Checkpoints (random weights, the full LFM2.5-VL-450M or SmolVLM-256M shape, seed 0; images: seeded synthetic):", "",
              "| config | checkpoint | built by | file | LM bytes per decode token | new tokens | tokens |",
              "|---|---|---|---|---|---|---|"]
    for name, c in results["configs"].items():
        lines.append(f"| {name} | {Path(c['model']).name} | {c['how_built']} | {c['file_bytes'] / 1e9:.2f} GB | "
                     f"{c['lm_bytes'] / 1e9:.3f} GB | {c['new_tokens']} | {_agreement(c)} |")
    lines += ["", "Memory bandwidth (GB/s, best of 5, `python -m bench.bandwidth`, at the start and at the end):", ""]
    for b in bw:
        keys = ("mlx_linear_read", "numpy_read_2t", "numpy_read_1t", "numpy_matvec", "numpy_copy", "mlx_copy")
        lines.append("- " + ", ".join(f"{k} {b[k]:.1f}" for k in keys if k in b)
                     + f"; best read: {b.get('best_read_name')} (load avg {b['load1_before']:.2f})")
    lines += ["", "The bound is (fastest read measured) ÷ (LM bytes per decode token); the KV cache and "
              "activations are not counted. The row measured right after the decode divides each run's decode "
              "by the bound from its own worker's reading (256 MB, best of 3, after the warm request), then "
              "takes the median.", "", "<details><summary>Raw numbers per round</summary>", ""]
    for name, conf in results["configs"].items():
        lines += [f"### {name}", "", _raw(conf), ""]
    lines += ["</details>", ""]
    Path(out).write_text("\n".join(lines))
    return tab
