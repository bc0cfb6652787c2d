"""LFM2-VL (and SmolVLM) in pure MLX: `load`, `generate`, `stream_generate`, `PromptCache`.

    from mlx_vlm_port import load, generate
    model, processor = load("LiquidAI/LFM2.5-VL-450M")
"""

import importlib
import sys
import types

from . import _blas

_blas.preload()  # before anything imports mlx.core

__all__ = ["load", "generate", "stream_generate", "batch_generate", "stream_batch_generate", "PromptCache"]

# name → (submodule, the names it exports here); imported on first use, so
# `import mlx_vlm_port` (and the CLI's --help) does not import MLX
_LAZY = {"load": ("load", ("load",)), "generate": ("generate", ("generate", "stream_generate")),
         "stream_generate": ("generate", ("generate", "stream_generate")),
         "batch_generate": ("batch", ("batch_generate", "stream_batch_generate")),
         "stream_batch_generate": ("batch", ("batch_generate", "stream_batch_generate")),
         "PromptCache": ("prompt_cache", ("PromptCache",))}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mlx_vlm_port' has no attribute {name!r}")
    module_name, exports = _LAZY[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    globals().update({export: getattr(module, export) for export in exports})
    return globals()[name]


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule `load` or `generate` (by any route) binds it on the
        # package under the name of a function: bind the function(s) instead.
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name][0] == name:
            for export in _LAZY[name][1]:
                super().__setattr__(export, getattr(value, export))
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
