"""`python -m bench.json_schema`: what holding the answer to a JSON Schema costs.

  decode   the float32 random LFM2.5-VL-450M (bench/checkpoints.py, built if
           missing), one 512x512 synthetic image, greedy: decode tokens/s
           without a schema (EOS ignored) and with SCHEMA (a detection-style
           array that cannot end before --new-tokens), alternating AB, BA, ...
           for --rounds rounds in one process; medians and their ratio;
  engines  the grammar engines side by side (outlines-core only if it is
           installed): one-time cost per tokenizer, per schema, and the median
           cost of a mask + advance per token while replaying a valid answer,
           with the checkpoint's tokenizer and with a 64k byte-level BPE trained
           here on the Python standard library's sources (a real vocabulary's
           size; no download).

The cores may be shared: compare figures of one run only. Writes
bench/RESULTS-json.md and .json.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from . import checkpoints as ck

HERE = Path(__file__).resolve().parent
ITEM = {"type": "object", "additionalProperties": False, "required": ["label", "bbox"], "properties": {
    "label": {"type": "string", "maxLength": 40},
    "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0, "maximum": 1}}}}
SCHEMA = {"type": "array", "minItems": 100, "maxItems": 100, "items": ITEM}
SAMPLE = [{"label": "a small brown cat", "bbox": [0.12, 0.3, 0.56, 0.9]},
          {"label": "dog on the grass", "bbox": [0.5, 0.25, 0.75, 0.5]}]


def decode(cache: Path, rounds: int, new_tokens: int) -> dict:
    sys.path.insert(0, str(ck.ROOT))
    from mlx_vlm_port import PromptCache, load, stream_generate
    from tests.images import synthetic_image

    model, processor = load(ck.ensure(cache, "f32"))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect all cats as JSON."}]}])
    image, prompt_cache = synthetic_image(512, 512, 1), PromptCache(max_entries=1)

    def rate(schema) -> float:
        times = [time.perf_counter() for _ in stream_generate(
            model, processor, prompt, [image], max_tokens=new_tokens, temperature=0.0, repetition_penalty=1.0,
            prompt_cache=prompt_cache, json_schema=schema, ignore_eos=schema is None)]
        assert len(times) == new_tokens, len(times)
        return (len(times) - 1) / (times[-1] - times[0])

    rate(None), rate(SCHEMA)  # warm-up: first-call costs, the prompt cache, llguidance's tokenizer view
    extra = overhead(processor, model.config.text_config.vocab_size)
    runs = []
    for n in range(rounds):  # A B, B A, ...: a drift in the machine's load hits both sides alike
        first, second = (None, SCHEMA) if n % 2 == 0 else (SCHEMA, None)
        a, b = rate(first), rate(second)
        runs.append({"free": a, "schema": b} if first is None else {"free": b, "schema": a})
    free, held = statistics.median(r["free"] for r in runs), statistics.median(r["schema"] for r in runs)
    return {"runs": runs, "free_tps": free, "schema_tps": held, "ratio": held / free, "new_tokens": new_tokens,
            "overhead": extra}


def overhead(processor, vocab_size: int) -> dict:
    """What a schema adds to one decoding step on the host, whatever the model: the
    mask, its transfer, masked greedy sampling and the advance, against plain greedy
    sampling, per token of a valid answer (logits of the model's vocabulary size)."""
    import mlx.core as mx

    from mlx_vlm_port.constrain import JsonConstraint

    constraint = JsonConstraint(processor, SCHEMA, vocab_size)
    logits = mx.random.normal((1, vocab_size))
    mx.eval(logits)
    held, free = [], []
    for token in processor.tokenizer.encode(json.dumps(SAMPLE)[:-1], add_special_tokens=False).ids:
        tic = time.perf_counter()
        mx.eval(mx.argmax(mx.where(mx.array(constraint.allowed()), logits, -mx.inf), axis=-1))
        constraint.advance(token)
        held.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        mx.eval(mx.argmax(logits, axis=-1))
        free.append(time.perf_counter() - tic)
    return {"held_us": statistics.median(held) * 1e6, "free_us": statistics.median(free) * 1e6,
            "tokens": len(held)}


def train_bpe(path: Path) -> Path:
    """A 64k byte-level BPE (LFM2's special tokens first) from the standard library's sources."""
    if path.exists():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tests.tiny_tokenizer import SPECIAL_TOKENS

    texts, size = [], 0
    for name in sorted(glob.glob(str(Path(json.__file__).parents[1] / "**" / "*.py"), recursive=True)):
        texts.append(Path(name).read_text(encoding="utf-8", errors="replace"))
        size += len(texts[-1])
        if size > 12_000_000:
            break
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=65536, special_tokens=SPECIAL_TOKENS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def engines(tokenizer_path: Path, n_vocab: int) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    import llguidance as llg
    from mlx_vlm_port.constrain import WHITESPACE

    tok = Tokenizer.from_file(str(tokenizer_path))
    schema = {"type": "array", "maxItems": 8, "items": ITEM}
    ids = tok.encode(json.dumps(SAMPLE), add_special_tokens=False).ids
    eos = tok.token_to_id("<|im_end|>")
    out = {"tokenizer_entries": tok.get_vocab_size(), "answer_tokens": len(ids)}
    bits = np.zeros((n_vocab + 31) // 32, np.int32)

    tic = time.perf_counter()
    lt = llg.LLTokenizer(tok.to_str(), n_vocab=n_vocab, eos_token=eos)
    t_tok = time.perf_counter() - tic
    tic = time.perf_counter()
    matcher = llg.LLMatcher(lt, llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": WHITESPACE}))
    t_schema = time.perf_counter() - tic
    steps = []
    for i in ids:
        tic = time.perf_counter()
        matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        assert matcher.consume_token(i), matcher.get_error()
        steps.append(time.perf_counter() - tic)
    out["llguidance"] = {"tokenizer_s": t_tok, "schema_s": t_schema, "step_us": statistics.median(steps) * 1e6,
                         "step_max_us": max(steps) * 1e6, "complete": matcher.is_accepting()}
    try:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError:
        return out
    tic = time.perf_counter()
    to_byte = _byte_level_decoder()
    vocab = {}
    for s, i in tok.get_vocab(with_added_tokens=False).items():
        if i != eos:
            vocab.setdefault(bytes(to_byte[c] for c in s), []).append(i)
    vocabulary = oc.Vocabulary(eos, vocab)
    t_tok = time.perf_counter() - tic
    tic = time.perf_counter()
    guide = oc.Guide(oc.Index(build_regex_from_schema(json.dumps(schema), WHITESPACE), vocabulary))
    t_schema = time.perf_counter() - tic
    steps = []
    for i in ids:
        tic = time.perf_counter()
        guide.write_mask_into(bits.ctypes.data, bits.size, 4)
        guide.advance(i)
        steps.append(time.perf_counter() - tic)
    out["outlines-core"] = {"tokenizer_s": t_tok, "schema_s": t_schema, "step_us": statistics.median(steps) * 1e6,
                            "step_max_us": max(steps) * 1e6, "complete": guide.is_finished()}
    return out


def _byte_level_decoder() -> dict:
    """GPT-2's byte-level alphabet: the character each byte is written as → the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def package_mb(name: str) -> float | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    folder = Path(spec.origin).parent
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def report(results: dict) -> str:
    d, load = results["decode"], results["load"]
    lines = ["# JSON Schema decoding: its cost", "",
             f"Written by `{results['command']}` on {results['finished']}.", "",
             f"- Machine: {platform.system()} {platform.machine()}, {results['cpus']} cores; load average "
             f"(1 min) {load[0]} at the start, {load[1]} at the end (the cores are shared: compare figures of one "
             f"run only).",
             f"- Versions: {results['versions']}.", ""]
    if d:
        lines += ["## Decode speed, float32 LFM2.5-VL-450M (random weights), greedy", "",
                  f"{d['new_tokens']} new tokens per run after a 512x512 image; without a schema (EOS ignored) and "
                  f"with a 100-box detection schema, alternating (AB, BA, ...), {len(d['runs'])} rounds in one process.", "",
                  "| | decode tokens/s (median) |", "|---|---|",
                  f"| no schema | {d['free_tps']:.2f} |", f"| JSON Schema | {d['schema_tps']:.2f} |",
                  f"| **with / without** | **{d['ratio']:.3f}** (target >= 0.9: "
                  f"{'PASS' if d['ratio'] >= 0.9 else 'MISS'}) |", "",
                  "Rounds (no schema / schema, tokens/s): " + ", ".join(
                      f"{r['free']:.2f} / {r['schema']:.2f}" for r in d["runs"]), "",
                  f"On the host, per token (median of {d['overhead']['tokens']} tokens of a valid answer): mask, "
                  f"transfer, masked greedy choice and advance {d['overhead']['held_us']:.0f} us against "
                  f"{d['overhead']['free_us']:.0f} us for the plain greedy choice: "
                  f"{d['overhead']['held_us'] - d['overhead']['free_us']:.0f} us added per token "
                  f"({(d['overhead']['held_us'] - d['overhead']['free_us']) / 1e4 * d['free_tps']:.2f}% of this "
                  f"run's median step).", ""]
    lines += ["## Grammar engines", "",
              "Per tokenizer: building the engine's view of the vocabulary (once per model); per schema: compiling "
              "an 8-box detection schema (once per request); per token: computing the mask and advancing, median "
              "(and worst) over replaying a valid 2-box answer.", "",
              "| tokenizer | engine | installed MB | per tokenizer (s) | per schema (s) | per token (us) | worst token (us) |",
              "|---|---|---|---|---|---|---|"]
    for name, e in results["engines"].items():
        for engine in ("llguidance", "outlines-core"):
            if engine in e:
                r = e[engine]
                lines.append(f"| {name} ({e['tokenizer_entries']} entries, {e['answer_tokens']} answer tokens) | "
                             f"{engine} | {results['sizes'].get(engine) or 0:.1f} | {r['tokenizer_s']:.3f} | "
                             f"{r['schema_s']:.3f} | {r['step_us']:.0f} | {r['step_max_us']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.json_schema", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds of the decode comparison (default 5)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens per decode run (default 64)")
    ap.add_argument("--no-decode", action="store_true", help="only the engine comparison (no 450M model)")
    ap.add_argument("--cache", type=Path, default=ck.DEFAULT_CACHE, help=f"(default {ck.DEFAULT_CACHE})")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS-json.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ck.ROOT))
    import mlx_vlm_port  # noqa: F401  (loads the BLAS before MLX)

    load = [_load1()]
    results = {"command": "python -m bench.json_schema " + " ".join(argv if argv is not None else sys.argv[1:]),
               "cpus": __import__("os").cpu_count(), "versions": _versions(),
               "sizes": {"llguidance": package_mb("llguidance"), "outlines-core": package_mb("outlines_core")}}
    results["decode"] = None if args.no_decode else decode(args.cache, args.rounds, args.new_tokens)
    model_vocab = 65536  # LFM2's
    results["engines"] = {
        "checkpoint's": engines(ck.ensure(args.cache, "f32") / "tokenizer.json", model_vocab),
        "64k BPE": engines(train_bpe(args.cache / "bpe-64k" / "tokenizer.json"), model_vocab)}
    load.append(_load1())
    results["load"], results["finished"] = load, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = report(results)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


def _load1() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = [f"python {platform.python_version()}"]
    for name in ("mlx", "numpy", "tokenizers", "llguidance", "outlines-core"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


if __name__ == "__main__":
    sys.exit(main())
