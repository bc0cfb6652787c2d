"""Run a model on a fixed set of synthetic image + prompt inputs and compare
its next-token distributions and greedy continuations with a reference run."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_vlm_port.processor import image_inputs

# (width, height, prompt): several sizes, each one view (no tiling) so a model stays quick on a CPU.
INPUTS = [
    (256, 256, "Describe this image."),
    (384, 256, "What is in the picture?"),
    (224, 352, "What colours do you see? Answer briefly."),
    (320, 320, "Is there any text in this image?"),
]


def synthetic_image(width: int, height: int, seed: int):
    """Seeded numpy picture: gradients, a few flat rectangles, a disc and pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                    255 * (x + y) / max(width + height - 2, 1)], axis=-1)
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        colour = rng.integers(0, 256, 3)  # drawn before the size: keeps the measured inputs reproducible
        h, w = rng.integers(8, height // 2 + 9), rng.integers(8, width // 2 + 9)
        img[y0: y0 + h, x0: x0 + w] = colour
    cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, min(width, height) // 3 + 11)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_inputs(processor, n_inputs: int, seed: int = 0) -> list[dict]:
    out = []
    for i, (w, h, prompt) in enumerate(INPUTS[:n_inputs]):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        out.append(processor(processor.apply_chat_template(messages), [synthetic_image(w, h, seed + i)],
                             do_image_splitting=False))
    return out


@dataclass
class Run:
    logits: list[np.ndarray] = field(default_factory=list)  # per input: (prompt length, vocab) float32
    tokens: list[list[int]] = field(default_factory=list)  # per input: the greedy continuation


def run_model(model, inputs: list[dict], n_tokens: int) -> Run:
    """Logits at every prompt position, then `n_tokens` greedy tokens (EOS does not stop it:
    a fixed length keeps the comparison position by position)."""
    run = Run()
    lm = model.language_model
    for x in inputs:
        embeds = model.get_input_embeddings(x["input_ids"], **image_inputs(x))
        cache = lm.make_cache()
        logits = lm(embeds, cache)[0]
        mx.eval(logits)
        run.logits.append(np.array(logits.astype(mx.float32)))
        token, tokens = int(mx.argmax(logits[-1]).item()), []
        for _ in range(n_tokens):
            tokens.append(token)
            step = lm(lm.embed(mx.array([[token]])), cache)
            token = int(mx.argmax(step[0, -1]).item())
        run.tokens.append(tokens)
    return run


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Comparison:
    kl_mean: float
    kl_p99: float
    top1: float  # fraction of prompt positions with the same argmax
    greedy: float  # fraction of the continuation tokens equal to the reference's, position by position
    positions: int


def compare(ref: Run, run: Run) -> Comparison:
    kls, same = [], []
    for a, b in zip(ref.logits, run.logits):
        la, lb = log_softmax(a), log_softmax(b)
        # KL(reference || quantized); rounding can make an identical pair a hair below 0
        kls.append(np.maximum((np.exp(la) * (la - lb)).sum(axis=-1), 0.0))
        same.append(a.argmax(axis=-1) == b.argmax(axis=-1))
    kl, same = np.concatenate(kls), np.concatenate(same)
    greedy = np.mean([np.mean(np.array(r) == np.array(t)) for r, t in zip(ref.tokens, run.tokens)])
    return Comparison(float(kl.mean()), float(np.percentile(kl, 99)), float(same.mean()), float(greedy), len(kl))
