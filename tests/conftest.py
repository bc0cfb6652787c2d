import json
import sys
from pathlib import Path

import pytest

import mlx_vlm_port  # noqa: F401  (loads OpenBLAS before anything imports MLX)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((GOLDEN / "manifest.json").read_text())


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, manifest) -> dict:
    """The golden files' tiny checkpoints, rebuilt (deterministically) by name."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: make_tiny_checkpoint(root / name, **spec["make_tiny_checkpoint_kwargs"])
            for name, spec in manifest["checkpoints"].items()}


@pytest.fixture(scope="session")
def tiny_path(checkpoints) -> Path:
    return checkpoints["default"]


# Widths that are multiples of 128 everywhere except the projector's 64-wide hidden
# layer (every quantization group size applies); `block_dim` is given because
# mlx-vlm 0.7.10 sizes the LFM2 MLP from it (default 1024).
WIDE = dict(text_overrides={"hidden_size": 128, "block_ff_dim": 384, "block_dim": 128},
            vision_overrides={"hidden_size": 128, "intermediate_size": 256})


@pytest.fixture(scope="session")
def wide_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("wide") / "wide", seed=1, **WIDE)


@pytest.fixture(scope="session")
def loaded(checkpoints) -> dict:
    from mlx_vlm_port import load

    return {name: load(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="session")
def tiny(loaded):
    """(model, processor) of the default tiny checkpoint."""
    return loaded["default"]
