"""What a checkpoint folder holds, read in one place: where it is (a folder or a
hub id), its config (read once), its family, its weight files and the rules of
its `quantization` section. No MLX here: the loader, the processor, the saver
and the quantizer all read checkpoints through this module.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .families import Family, family, family_of_image_processor

HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
INDEX = "model.safetensors.index.json"
QUANTIZATION_KEYS = ("quantization", "quantization_config")  # mlx-vlm writes both, readers take either


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found, fetched or read; the message says which and why."""


def resolve(path_or_repo: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id, downloaded or taken from the local cache."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{name}: not a checkpoint folder or a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # very old huggingface_hub
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{name}: no such model on the Hugging Face hub (or it is private)") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{name}: not in the local cache and the hub cannot be reached "
                             "(offline, or HF_HUB_OFFLINE=1); download it once while online") from None
    except Exception as e:  # network errors come in many types
        raise ModelLoadError(f"{name}: could not download ({type(e).__name__}: {e})") from None


def read_json(path: Path) -> dict:
    """A JSON file's object; {} when the file is absent."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None


def weight_files(path: Path) -> list[Path]:
    """The safetensors files: those the index lists (all present), else every *.safetensors."""
    index = path / INDEX
    if index.exists():
        files = sorted(set(read_json(index)["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ModelLoadError(f"{path}: shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return [path / f for f in files]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights in this folder")
    return files


def quantization_section(config: dict) -> dict | None:
    """The config's quantization section (mlx-vlm / mlx-lm style: bits, group_size,
    per-layer entries), or None for a float checkpoint."""
    for key in QUANTIZATION_KEYS:
        q = config.get(key)
        if isinstance(q, dict) and "bits" in q:
            return q
    return None


def with_quantization(config: dict, section: dict | None) -> dict:
    """A copy of `config` whose quantization section is `section` (or none), under both keys."""
    out = copy.deepcopy(config)
    for key in QUANTIZATION_KEYS:
        out.pop(key, None)
        if section is not None:
            out[key] = copy.deepcopy(section)
    return out


def layer_quantization(section: dict, path: str) -> dict:
    """group_size/bits/mode of one layer: its own entry (under its full path, or without
    the `language_model.` prefix as mlx-lm writes them) over the section's defaults."""
    out = {k: section[k] for k in ("group_size", "bits", "mode") if k in section}
    for key in (path, path.removeprefix("language_model.")):
        if isinstance(section.get(key), dict):
            out.update({k: v for k, v in section[key].items() if k in ("group_size", "bits", "mode")})
            break
    return out


def describe_quantization(section: dict | None, has_scales: bool) -> str:
    """A checkpoint's quantization in words, for messages: its config section, else its weights."""
    if section:
        return f"{section.get('bits')}-bit, group {section.get('group_size')}"
    return "its weights have quantization scales" if has_scales else "float"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder: its config.json ({} if absent) and its family."""

    path: Path
    config: dict
    family: Family

    @classmethod
    def open(cls, path_or_repo: str | os.PathLike) -> "Checkpoint":
        path = resolve(path_or_repo)
        config = read_json(path / "config.json")
        kind = config.get("model_type")
        try:
            if kind is None:  # a processor-only folder names its family by its image processor
                found = family_of_image_processor(
                    read_json(path / "preprocessor_config.json").get("image_processor_type"))
                if found is None and not (path / "config.json").exists():
                    raise ModelLoadError(f"{path}: no config.json")
                return cls(path, config, found or family(None))
            return cls(path, config, family(kind))
        except ValueError as e:
            raise ModelLoadError(f"{path / 'config.json'}: {e}") from None

    def read_json(self, name: str) -> dict:
        return read_json(self.path / name)

    def weight_files(self) -> list[Path]:
        return weight_files(self.path)

    @property
    def quantization(self) -> dict | None:
        return quantization_section(self.config)
