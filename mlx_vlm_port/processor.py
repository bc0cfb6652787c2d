"""The processor: chat template, `<image>` expansion and tokenizer, with the image
rules of the checkpoint's family (processing_lfm2_vl, processing_idefics3).
NumPy, PIL and `tokenizers` only; its numbers equal the reference processors'."""

from __future__ import annotations

import json
import os

import numpy as np

from .checkpoint import Checkpoint
from .families import Family
from .image import load_image
from .options import ImageOptions, UnsupportedOption

__all__ = ["Processor", "StreamingDetokenizer", "UnsupportedOption", "image_inputs"]


def image_inputs(inputs: dict) -> dict:
    """A processor output's image arrays (everything but input_ids), by the names the
    family's `get_input_embeddings` takes: pixel_values, and for LFM2-VL also
    pixel_attention_mask and spatial_shapes."""
    return {k: v for k, v in inputs.items() if k != "input_ids"}


class Processor:
    """Chat template, `<image>` expansion, tokenizer and image processor of one checkpoint."""

    def __init__(self, tokenizer, chat_template: str | None, image_processor, family: Family,
                 bos_token: str = "<|startoftext|>", eos_token: str = "<|im_end|>",
                 extra_eos_ids: tuple = ()):
        self.tokenizer, self.family = tokenizer, family
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.image_token = image_processor.image_token
        self.image_token_id = tokenizer.token_to_id(self.image_token)
        ids = (tokenizer.token_to_id(eos_token), tokenizer.token_to_id("<|endoftext|>"), *extra_eos_ids)
        self.eos_token_ids = {i for i in ids if i is not None}
        self._template = None

    @classmethod
    def from_pretrained(cls, path) -> "Processor":
        return cls.from_checkpoint(Checkpoint.open(path))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> "Processor":
        from tokenizers import Tokenizer

        path = checkpoint.path
        tok_cfg = checkpoint.read_json("tokenizer_config.json")
        settings = {}
        for name in ("preprocessor_config.json", "processor_config.json"):
            d = checkpoint.read_json(name)
            settings.update(d.get("image_processor", {}))
            settings.update(d)
        template = None
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").exists():
            template = checkpoint.read_json("chat_template.json").get("chat_template")
        template = template or tok_cfg.get("chat_template") or settings.get("chat_template")
        eos = checkpoint.read_json("generation_config.json").get("eos_token_id")
        image_processor = checkpoint.family.image_processor().from_settings(settings, checkpoint.config)
        return cls(Tokenizer.from_file(str(path / "tokenizer.json")), template, image_processor, checkpoint.family,
                   bos_token=_token_str(tok_cfg.get("bos_token"), "<|startoftext|>"),
                   eos_token=_token_str(tok_cfg.get("eos_token"), "<|im_end|>"),
                   extra_eos_ids=tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ())

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True, tools: list | None = None) -> str:
        if self.chat_template is None:
            raise ValueError("this checkpoint has no chat template")
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)

    def __call__(self, text: str, images: list | None = None, *, min_image_tokens: int | None = None,
                 max_image_tokens: int | None = None, do_image_splitting: bool | None = None,
                 min_tiles: int | None = None, max_tiles: int | None = None,
                 use_thumbnail: bool | None = None, longest_edge: int | None = None,
                 image_options: ImageOptions | None = None, return_numpy: bool = False) -> dict:
        """Tokenise `text`, expanding each `<image>` for the matching image.

        Image options apply to one family: the token budget and tiling options to
        LFM2-VL, `longest_edge` to Idefics3 (SmolVLM); `do_image_splitting` to both
        (options.ImageOptions; the keywords given win over `image_options`).
        Returns input_ids (1, L) and, with images, the family's image arrays
        (pixel_values first; all views of all images along axis 0): NumPy arrays
        with `return_numpy`, else MLX arrays."""
        options = (image_options or ImageOptions()).updated(
            min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens, min_tiles=min_tiles,
            max_tiles=max_tiles, use_thumbnail=use_thumbnail, longest_edge=longest_edge,
            do_image_splitting=do_image_splitting)
        options.for_family(self.family.model_type, self.family.label)  # refuses the other family's
        images = _image_list(images)
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the prompt has {len(pieces) - 1} {self.image_token} tokens "
                             f"but {len(images)} images were given")
        expanded, arrays = [pieces[0]], []
        for image, piece in zip(images, pieces[1:]):
            placeholder, image_arrays = self.image_processor.expand(np.asarray(load_image(image)), options)
            expanded += [placeholder, piece]
            arrays.append(image_arrays)
        encoding = self.tokenizer.encode("".join(expanded), add_special_tokens=self.image_processor.add_special_tokens)
        if not encoding.ids:
            raise ValueError("the prompt is empty: there is nothing to generate from")
        out = {"input_ids": np.array([encoding.ids], np.int32)}
        for name in arrays[0] if arrays else ():
            out[name] = np.concatenate([a[name] for a in arrays])
        if return_numpy:
            return out
        import mlx.core as mx

        return {k: mx.array(v) for k, v in out.items()}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


class StreamingDetokenizer:
    """Turns a growing token list into text pieces, holding back incomplete UTF-8."""

    def __init__(self, processor: Processor):
        self.processor, self.tokens, self.emitted = processor, [], ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.processor.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        if len(self.tokens) > 64 and not piece.endswith("\ufffd"):
            # Restart the window so decoding stays O(1) per token.
            self.tokens, self.emitted = [], ""
        return piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.processor.decode(self.tokens)
        piece, self.tokens, self.emitted = text[len(self.emitted):], [], ""
        return piece


def _image_list(images) -> list:
    """`images` as a list: None → [], one image (a path, bytes, a file, a PIL or NumPy
    image) → [it]; a path is a string, which must not be read as its characters."""
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)) \
            or hasattr(images, "getbands") or hasattr(images, "read"):  # PIL image, file object
        return [images]
    return list(images)


def _token_str(value, default: str) -> str:
    if isinstance(value, dict):  # {"content": "<|im_end|>", ...}
        value = value.get("content")
    return value or default
