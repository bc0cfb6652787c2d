"""One benchmark child: import, load, a first request, then a warm one; prints one JSON line.

    python -m bench.worker --impl ours|peer --model DIR --image SPEC --new-tokens N

SPEC is an image file, or WxH[:seed] for a synthetic image (tests/images.py).
Request 1 (the first in this process, `--first-tokens` tokens, default 1) gives
the in-process cold time to first token; request 2 (`--new-tokens`, on
`--warm-image`: same size, other pixels) gives the warm time to first token
(model loaded, one-time costs paid, nothing of request 1 reusable) and the
decode rate. Both are greedy, without repetition penalty, with EOS ignored, and timed
here, identically for both implementations: time to first token = from the
call (prompt templating excluded, image decoding and processing included) to
the first token handed out; decode tokens/s = (n − 1) / (time of token n −
time of token 1). Peak memory is this process's ru_maxrss. After it is read,
the memory bandwidth is measured here (bench.bandwidth, `--bandwidth-mb`, best
of 3): the decode's bound at the moment of the decode, on a machine whose
bandwidth moves.
The JSON line starts with "BENCH_JSON " so the peer's own printing is ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

PROMPT = "Describe this image."
TAG = "BENCH_JSON "


def import_ours():
    """What `python -m app.caption` needs before it loads a model."""
    import mlx_vlm_port  # noqa: F401  (preloads OpenBLAS before MLX)
    from mlx_vlm_port import load, stream_generate

    for name in ("app.caption", "captioning.captioner"):
        try:
            __import__(name)
        except ImportError:
            pass
    import jinja2.sandbox  # noqa: F401  (the chat template)
    import PIL.Image  # noqa: F401
    import tokenizers  # noqa: F401

    return load, stream_generate


def import_peer():
    """What `python -m mlx_vlm.generate` imports."""
    import mlx_vlm.generate  # noqa: F401
    from mlx_vlm import load, stream_generate

    return load, stream_generate


class Ours:
    def __init__(self, load, stream):
        self._load, self._stream = load, stream

    def load(self, path):
        self.model, self.processor = self._load(path)

    def prompt(self):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True)

    def stream(self, prompt, image, n):
        for r in self._stream(self.model, self.processor, prompt, [image], max_tokens=n, temperature=0.0,
                              min_p=0.0, repetition_penalty=1.0, ignore_eos=True):
            yield r.token, r.prompt_tokens

    def quantized(self):
        import mlx.nn as nn

        return any(isinstance(m, nn.QuantizedLinear) for _, m in self.model.named_modules())


class Peer(Ours):
    def load(self, path):
        self.model, self.processor = self._load(path)
        tolerant_detokenizer(self.model.config.text_config.vocab_size)
        never = lambda token: False  # noqa: E731  (EOS ignored)
        for owner in (self.processor, getattr(self.processor, "tokenizer", None)):
            if owner is not None and hasattr(owner, "stopping_criteria"):
                owner.stopping_criteria = never

    def prompt(self):
        from mlx_vlm.prompt_utils import apply_chat_template

        return apply_chat_template(self.processor, self.model.config, PROMPT, num_images=1)

    def stream(self, prompt, image, n):
        seen = 0
        for r in self._stream(self.model, self.processor, prompt, image=[image], max_tokens=n,
                              temperature=0.0, repetition_penalty=None, verbose=False):
            # Its last response repeats the last token (finish_reason set): count each once.
            if r.token is not None and r.generation_tokens > seen:
                seen = r.generation_tokens
                yield int(r.token), r.prompt_tokens


def tolerant_detokenizer(vocab_size: int) -> None:
    """The random-weight models emit ids the small test tokenizer lacks; the peer's
    streaming detokenizer indexes a list by id and would raise. Pad its id→text
    table (ours decodes unknown ids as nothing); the per-token cost is unchanged."""
    from mlx_vlm.generate import dispatch

    make = dispatch.make_streaming_detokenizer
    if getattr(make, "bench_padded", False):
        return

    def padded(processor):
        detok = make(processor)
        table = getattr(detok, "tokenmap", None)
        if isinstance(table, list) and len(table) < vocab_size:
            filler = next(v for v in table if v)
            table += [filler] * (vocab_size - len(table))
            for i, v in enumerate(table):
                table[i] = v or filler
        return detok

    padded.bench_padded = True
    dispatch.make_streaming_detokenizer = padded


def resolve_image(spec: str) -> str:
    if os.path.exists(spec):
        return spec
    size, _, seed = spec.partition(":")
    w, h = (int(v) for v in size.lower().split("x"))
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tests.images import synthetic_image

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-synthetic-{w}x{h}-s{seed or 0}.png"
    synthetic_image(w, h, int(seed or 0)).save(path)
    return str(path)


def request(impl, prompt, image, n):
    tic = time.perf_counter()
    times, tokens, n_prompt = [], [], None
    for token, n_prompt in impl.stream(prompt, image, n):
        times.append(time.perf_counter())
        tokens.append(token)
    out = {"ttft_s": times[0] - tic, "tokens": len(tokens), "prompt_tokens": n_prompt, "token_ids": tokens}
    if len(times) > 1:
        out["decode_tps"] = (len(times) - 1) / (times[-1] - times[0])
    return out


def device_info() -> dict:
    import mlx.core as mx

    dev = mx.default_device()
    info = {"device": str(dev), "mlx": mx.__version__}
    name = None
    if dev.type == mx.gpu:
        for get in (getattr(mx, "device_info", None), getattr(getattr(mx, "metal", None), "device_info", None)):
            try:
                name = get().get("device_name") if get else None
            except Exception:
                name = None
            if name:
                break
    info["device_name"] = name or ("cpu" if dev.type == mx.cpu else "gpu")
    info["mlx_peak_gb"] = mx.get_peak_memory() / 1e9
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=("ours", "peer"), required=True)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--image", required=True, help="image file, or WxH[:seed] for a synthetic image")
    ap.add_argument("--warm-image", default=None,
                    help="image of the warm request (default: --image; the benchmark passes another image of "
                         "the same size, so no reuse of the first request's image work applies)")
    ap.add_argument("--new-tokens", type=int, default=50, help="tokens of the warm request (default 50)")
    ap.add_argument("--first-tokens", type=int, default=1, help="tokens of the first request (default 1)")
    ap.add_argument("--requests", type=int, choices=(1, 2), default=2, help="1: the first request only")
    ap.add_argument("--bandwidth-mb", type=int, default=256,
                    help="array size of the bandwidth reading after the warm request (default 256; 0: none)")
    args = ap.parse_args(argv)
    image = resolve_image(args.image)
    warm_image = resolve_image(args.warm_image) if args.warm_image else image

    tic = time.perf_counter()
    impl = (Ours(*import_ours()) if args.impl == "ours" else Peer(*import_peer()))
    out = {"impl": args.impl, "import_s": time.perf_counter() - tic}
    tic = time.perf_counter()
    impl.load(args.model)
    out["load_s"] = time.perf_counter() - tic
    prompt = impl.prompt()
    out["first"] = request(impl, prompt, image, args.first_tokens)
    if args.requests > 1:
        out["warm"] = request(impl, prompt, warm_image, args.new_tokens)
    out["quantized"] = impl.quantized()
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["blas_mapped"] = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps")
                                 if "blas" in line or "libmkl" in line}) if os.path.exists("/proc/self/maps") else None
    out.update(device_info())
    if args.requests > 1 and args.bandwidth_mb:  # after the memory figures: its arrays are not the model's
        from bench.bandwidth import measure

        out["bandwidth_after"] = measure(args.bandwidth_mb, 3)
    out["python"] = sys.version.split()[0]
    if args.impl == "peer":
        from importlib.metadata import version

        out["mlx_vlm"] = version("mlx-vlm")
    print(TAG + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
