"""The optimised BLAS is loaded before MLX on Linux, and can be turned off."""

import os
import subprocess
import sys

import pytest

from mlx_vlm_port import _blas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

PROBE = ("import mlx_vlm_port, mlx.core as mx; print(mlx_vlm_port._blas.loaded); "
         "print(any(('openblas' in l or 'mkl_rt' in l) for l in open('/proc/self/maps')))")


def run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_PORT_")} | env_extra
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not _blas.candidates(), reason="no optimised BLAS installed")
def test_loaded_before_mlx():
    path, mapped = run({})
    assert path in _blas.candidates() and mapped == "True"


def test_can_be_turned_off():
    assert run({"MLX_VLM_PORT_NO_BLAS": "1"}) == ["None", "False"]


@pytest.mark.parametrize("first", ["mlx.core", "numpy, mlx.core"])  # numpy maps its own OpenBLAS, unusable by MLX
def test_too_late_once_mlx_is_imported_says_so(first):
    code = f"import {first}; import mlx_vlm_port; print(mlx_vlm_port._blas.loaded)"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    if _blas.candidates():
        assert "import mlx_vlm_port first" in out.stderr
