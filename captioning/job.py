"""What is asked of one image (Job), what comes back (Result), and the named
detail presets the CLI's --detail and the menubar's Detail menu offer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mlx_vlm_port.options import ImageOptions, SamplingOptions

DEFAULT_MODEL = "LiquidAI/LFM2.5-VL-450M-MLX-8bit"
DEFAULT_PROMPT = "Describe this image."
DETECT_PROMPT = ("Detect all instances of: {query}. Response must be a JSON array: "
                 '[{{"label": ..., "bbox": [x1, y1, x2, y2]}}, ...]. Coordinates are normalized to [0,1].')

# How much of the image the encoder sees, per model family (more views or tokens =
# more detail, more time). "Detailed" is each family's own default.
DETAILS: dict[str, dict[str, ImageOptions]] = {
    "Fast": {"lfm2_vl": ImageOptions(max_image_tokens=64, do_image_splitting=False),
             "idefics3": ImageOptions(do_image_splitting=False)},  # one 512² view: 64 tokens
    "Balanced": {"lfm2_vl": ImageOptions(max_image_tokens=256, do_image_splitting=False),
                 "idefics3": ImageOptions(longest_edge=1024)},  # at most 2×2 tiles + the global view
    "Detailed": {"lfm2_vl": ImageOptions(max_image_tokens=256, do_image_splitting=True),
                 "idefics3": ImageOptions()},  # up to 4×4 tiles + the global view
}


def default_model() -> str:
    return os.environ.get("MLX_VLM_PORT_MODEL") or DEFAULT_MODEL


@dataclass(frozen=True)
class Job:
    """One question about one image, and how to answer it."""

    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    image: ImageOptions = field(default_factory=ImageOptions)  # set options win over the detail preset
    detail: str | None = None  # a DETAILS name
    # A JSON Schema the answer is held to ({"type": "object"}: any JSON object); None: free text.
    json_schema: dict | None = None

    def __post_init__(self):
        if self.detail is not None and self.detail not in DETAILS:
            raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {self.detail!r}")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ValueError(f"json_schema must be a JSON object (a JSON Schema), "
                             f"got {type(self.json_schema).__name__}")

    def image_options(self, family: str) -> ImageOptions:
        """The image options for a model of `family` (model_type): the preset's, then the job's own."""
        preset = DETAILS[self.detail][family] if self.detail else ImageOptions()
        return preset.updated(**self.image.given())


@dataclass
class Result:
    text: str
    model: str
    prompt_tokens: int
    generation_tokens: int
    seconds: float
    finish_reason: str | None = None  # "stop", "length"
    image: object = None  # the decoded PIL image when the caller asked for it (--draw)
