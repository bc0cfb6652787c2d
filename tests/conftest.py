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


@pytest.fixture(scope="session")
def loaded(checkpoints) -> dict:
    from mlx_vlm_port import load

    return {name: load(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="session")
def tiny(loaded):
    """(model, processor) of the default tiny checkpoint."""
    return loaded["default"]
