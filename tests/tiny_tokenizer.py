"""The tiny checkpoints' tokenizer: byte-level BPE with LFM2's special-token ids."""

from __future__ import annotations

import json

IMAGE_TOKEN_ID = 396
VOCAB_SIZE = 1024

def _special_tokens() -> list[str]:
    toks = [
        "<|pad|>",
        "<|startoftext|>",
        "<|endoftext|>",
        "<|fim_pre|>",
        "<|fim_mid|>",
        "<|fim_suf|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|tool_list_start|>",
        "<|tool_list_end|>",
        "<|tool_call_start|>",
        "<|tool_call_end|>",
        "<|tool_response_start|>",
        "<|tool_response_end|>",
    ]
    toks += [f"<|reserved_{i}|>" for i in range(len(toks), IMAGE_TOKEN_ID)]
    toks.append("<image>")
    toks += [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)]
    toks += ["<|img_thumbnail|>", "<|image_start|>", "<|image_end|>"]
    assert len(toks) == 500
    return toks


SPECIAL_TOKENS = _special_tokens()

_CORPUS = """\
The small camera sat on the wooden table next to a cup of coffee. Morning light
came through the window and painted long yellow stripes across the floor. A cat
slept on the chair, and a dog watched the birds in the garden outside the house.
Describe this image. What is in the picture? The picture shows a red car parked
on a quiet street, with green trees, a blue sky and a few white clouds above.

People walk along the river in the afternoon. Children play with a ball near the
water while their parents talk on a bench. There is a bridge made of stone, and
boats move slowly under it. The city behind them has tall buildings with many
windows, and the sun is low in the west, so the shadows are long and dark.

In the kitchen there is a bowl of fruit: apples, oranges, bananas and a lemon.
A knife lies beside a loaf of bread on a cutting board. The wall is painted in a
light grey colour, and a clock hangs above the door. It is a simple, clean room
where someone is about to cook dinner for the family and a couple of friends.

The chart in the document compares the results of three models on several tasks.
The first column lists the name of each task, the second column gives the score,
and the third column gives the time in seconds. Numbers such as 12, 45, 3.5 and
100 appear in the table. The text at the bottom explains how the values were
measured and why the newest model is faster than the older ones.

A mountain rises above the lake, covered with snow at the top and forest at the
bottom. A small wooden cabin stands on the shore, with smoke coming out of the
chimney. Two people in bright jackets are hiking on a path that winds between
the rocks. The water is calm and reflects the mountain like a mirror.

The screenshot shows a web page with a search box, a menu on the left side and a
list of articles in the middle. Each article has a title, a short summary and an
image. Buttons at the top say Home, News, Sports, Weather and Settings. The user
has typed a question into the box and is waiting for the answer to appear.
"""


def build_tokenizer(special_tokens: list[str] | None = None, corpus: str = _CORPUS, bos: str | None = "<|startoftext|>"):
    """Deterministic byte-level BPE tokenizer with exactly 1024 entries, `special_tokens`
    first (ids 0..n-1; default LFM2's). With `bos`, encode(..., add_special_tokens=True)
    prepends it, like the published LFM2 tokenizers; chat prompts already carry it, so
    callers (and the reference processor) encode them with add_special_tokens=False."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special_tokens = SPECIAL_TOKENS if special_tokens is None else special_tokens
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if bos is not None:
        template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                 special_tokens=[(bos, special_tokens.index(bos))])
        tok.post_processor = processors.Sequence([tok.post_processor, template])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus.split("\n\n"), trainer=trainer)
    vocab = tok.get_vocab()
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(vocab)} entries, expected {VOCAB_SIZE}")
    for i, s in enumerate(special_tokens):
        if vocab[s] != i:
            raise RuntimeError(f"special token {s!r} has id {vocab[s]}, expected {i}")
    return tok


def tokenizer_json(tok) -> dict:
    """tokenizer.json content with a canonical (sorted-by-id) vocab."""
    d = json.loads(tok.to_str())
    # make the order of the vocab deterministic
    d["model"]["vocab"] = dict(sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1]))
    return d


CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- else -%}\n"
    "{%- for item in message['content'] -%}\n"
    "{%- if item['type'] == 'image' -%}\n"
    "{{- '<image>' -}}\n"
    "{%- elif item['type'] == 'text' -%}\n"
    "{{- item['text'] -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)


def tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 8192,
        "padding_side": "left",
        "processor_class": "Lfm2VlProcessor",
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added,
    }
