"""The user's choices (model, detail, language, copy) persisted as JSON next to the history."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from captioning.job import DETAILS, Job, default_model
from mlx_vlm_port.options import SamplingOptions
from menubar.storage import data_dir, read_json, write_private_json

# The languages LFM2-VL was trained to answer in.
LANGUAGES = ("English", "Arabic", "Chinese", "French", "German", "Japanese", "Korean", "Portuguese", "Spanish")
MODELS = tuple(f"LiquidAI/LFM2.5-VL-450M-MLX-{q}" for q in ("4bit", "5bit", "6bit", "8bit", "bf16")) + tuple(
    f"HuggingFaceTB/SmolVLM-{size}-Instruct" for size in ("256M", "500M"))


def settings_path() -> Path:
    return data_dir() / "settings.json"


@dataclass
class Settings:
    model: str = field(default_factory=default_model)  # $MLX_VLM_PORT_MODEL or the 8-bit model
    detail: str = "Balanced"
    language: str = "English"
    copy_results: bool = True  # put each result on the clipboard as well as in a notification
    max_tokens: int = SamplingOptions().max_tokens
    local_api: bool = False  # serve the OpenAI-compatible API on 127.0.0.1:8089
    path: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path | None = None) -> "Settings":
        """Read the file; a missing file, bad JSON or a bad value falls back to the default for it."""
        path = path or settings_path()
        raw = read_json(path, {})
        s = cls(path=path)
        if not isinstance(raw, dict):
            return s
        if isinstance(raw.get("model"), str) and raw["model"].strip():
            s.model = raw["model"]
        if raw.get("detail") in DETAILS:
            s.detail = raw["detail"]
        if raw.get("language") in LANGUAGES:
            s.language = raw["language"]
        if isinstance(raw.get("copy_results"), bool):
            s.copy_results = raw["copy_results"]
        if isinstance(raw.get("local_api"), bool):
            s.local_api = raw["local_api"]
        if isinstance(raw.get("max_tokens"), int) and not isinstance(raw["max_tokens"], bool) \
                and 1 <= raw["max_tokens"] <= 4096:
            s.max_tokens = raw["max_tokens"]
        return s

    def save(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        write_private_json(self.path or settings_path(), values)

    def job(self, prompt: str, *, greedy: bool = False, json_schema: dict | None = None) -> Job:
        """A Job asking `prompt` with these settings; `greedy` for structured answers (Find
        Objects), which also get room for a list of boxes; `json_schema` holds the answer to it."""
        sampling = SamplingOptions(max_tokens=self.max_tokens)
        if greedy:
            sampling = replace(sampling, temperature=0.0, max_tokens=max(512, self.max_tokens))
        return Job(prompt, sampling=sampling, detail=self.detail, json_schema=json_schema)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def in_language(question: str, language: str) -> str:
    """The prompt asking for the answer in `language` (English needs no instruction)."""
    if language == "English" or language not in LANGUAGES:
        return question
    return f"{question.rstrip()} Answer in {language}."
