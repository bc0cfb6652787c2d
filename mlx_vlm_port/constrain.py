"""Decoding held to a JSON Schema: llguidance turns the schema into a grammar
and, after each chosen token, into the set of tokens that may come next.

`json_schema` everywhere is a dict: a JSON Schema, or {"type": "object"} for
"any JSON object" (OpenAI's json_object mode). The text generated under it
always parses and validates once the grammar accepts; EOS is allowed only then.
Whitespace between JSON tokens is limited (WHITESPACE) so it cannot run away;
a schema's own "x-guidance" options win over that."""

from __future__ import annotations

import weakref

import numpy as np

# Between JSON tokens: an optional newline, then up to 8 spaces (pretty-printed
# JSON a few levels deep fits; endless blank lines do not).
WHITESPACE = r"\n? {0,8}"

# llguidance's tokenizer view costs ~0.2-0.6 s to build (a 64k vocabulary): once per processor.
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a runtime dependency; a broken install still gets one clear line
        raise ImportError("json_schema needs the llguidance package: pip install llguidance") from None
    return llguidance


def _tokenizer(processor, vocab_size: int):
    """The processor's `tokenizers` tokenizer as llguidance sees it, over the model's
    vocabulary (ids past the tokenizer's own are never allowed)."""
    key = _tokenizers.get(processor)
    if key is None or key[0] != vocab_size:
        llg = _llguidance()
        tok = llg.LLTokenizer(processor.tokenizer.to_str(), n_vocab=vocab_size,
                              eos_token=sorted(processor.eos_token_ids))
        key = _tokenizers[processor] = (vocab_size, tok)
    return key[1]


def check_schema(json_schema) -> str:
    """The schema as a llguidance grammar; ValueError with the engine's reason when
    it is not a JSON Schema the engine can enforce."""
    if not isinstance(json_schema, dict):
        raise ValueError(f"json_schema must be a JSON Schema object (a dict), got {type(json_schema).__name__}")
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(json_schema, defaults={"whitespace_pattern": WHITESPACE})
    except (ValueError, TypeError) as e:  # not serialisable as JSON
        raise ValueError(f"json_schema: {e}") from None
    error = llg.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise ValueError(f"json_schema not supported: {_one_line(error)}")
    return grammar


class JsonConstraint:
    """One generation's grammar state: `allowed()` the tokens that may come next
    (a bool array over the model's vocabulary), `advance(token)` after each choice."""

    def __init__(self, processor, json_schema: dict, vocab_size: int):
        grammar = check_schema(json_schema)
        llg = _llguidance()
        self.matcher = llg.LLMatcher(_tokenizer(processor, vocab_size), grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"json_schema not supported: {_one_line(self.matcher.get_error())}")
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, np.int32)

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens the grammar allows next (EOS only once it accepts)."""
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:self.vocab_size].view(bool)

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"json_schema: token {token} was chosen against the grammar: "
                               f"{_one_line(self.matcher.get_error())}")

    @property
    def done(self) -> bool:
        """The JSON value is complete and nothing but EOS may follow."""
        return self.matcher.is_stopped()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]

