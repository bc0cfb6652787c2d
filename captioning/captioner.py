"""One loaded model and the caption jobs it runs; shared by the CLI and the menubar worker."""

from __future__ import annotations

import os
from typing import Iterator

DEFAULT_MODEL = "LiquidAI/LFM2.5-VL-450M-MLX-8bit"
DEFAULT_PROMPT = "Describe this image."
DETECT_PROMPT = ("Detect all instances of: {query}. Response must be a JSON array: "
                 '[{{"label": ..., "bbox": [x1, y1, x2, y2]}}, ...]. Coordinates are normalized to [0,1].')


# Detail presets, per model family: how much of the image the encoder sees
# (more views or tokens = more detail, more time). "Detailed" is each family's own default.
DETAILS: dict[str, dict[str, dict]] = {
    "Fast": {"lfm2_vl": {"max_image_tokens": 64, "do_image_splitting": False},
             "idefics3": {"do_image_splitting": False}},  # one 512² view: 64 tokens
    "Balanced": {"lfm2_vl": {"max_image_tokens": 256, "do_image_splitting": False},
                 "idefics3": {"longest_edge": 1024}},  # at most 2×2 tiles + the global view
    "Detailed": {"lfm2_vl": {"max_image_tokens": 256, "do_image_splitting": True},
                 "idefics3": {}},  # up to 4×4 tiles + the global view
}


def default_model() -> str:
    return os.environ.get("MLX_VLM_PORT_MODEL") or DEFAULT_MODEL


class Captioner:
    """Holds (model, processor); every call must come from the thread that loaded it."""

    def __init__(self, model: str | None = None):
        self.model_id = model or default_model()
        self.model = self.processor = None

    def load(self) -> "Captioner":
        if self.model is None:
            from mlx_vlm_port import load

            self.model, self.processor = load(self.model_id)
        return self

    def prompt(self, question: str, system: str | None = None, n_images: int = 1) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @property
    def family(self) -> str:
        """The loaded model's model_type ("lfm2_vl" or "idefics3")."""
        return self.load().model.config.model_type

    def stream(self, image, question: str = DEFAULT_PROMPT, *, system: str | None = None,
               max_tokens: int = 256, temperature: float = 0.1, min_p: float = 0.15,
               repetition_penalty: float = 1.05, detail: str | None = None, max_image_tokens: int | None = None,
               longest_edge: int | None = None, do_image_splitting: bool | None = None) -> Iterator:
        """Caption one image (a path, bytes or PIL image): yields generate.Response pieces.

        `detail` names a preset of DETAILS, resolved for the loaded family; the image
        options given explicitly win over it (and the processor refuses those that do
        not apply to the family: max_image_tokens is LFM2-VL's, longest_edge SmolVLM's)."""
        from mlx_vlm_port import stream_generate
        from mlx_vlm_port.image import load_image

        self.load()
        picture = load_image(image)
        if detail is not None and detail not in DETAILS:
            raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
        options = dict(DETAILS[detail][self.family]) if detail else {}
        options.update({k: v for k, v in dict(max_image_tokens=max_image_tokens, longest_edge=longest_edge,
                                              do_image_splitting=do_image_splitting).items() if v is not None})
        yield from stream_generate(self.model, self.processor, self.prompt(question, system), [picture],
                                   max_tokens=max_tokens, temperature=temperature, min_p=min_p,
                                   repetition_penalty=repetition_penalty, **options)
