"""LFM2-VL (and SmolVLM) in pure MLX: `load`, `generate`, `stream_generate`, `PromptCache`.

    from mlx_vlm_port import load, generate
    model, processor = load("LiquidAI/LFM2.5-VL-450M")
"""

from . import _blas

_blas.preload()  # before anything imports mlx.core

__all__ = ["load", "generate", "stream_generate", "PromptCache"]


def __getattr__(name):
    # Lazy, so `import mlx_vlm_port` (and the CLI's --help) does not import MLX.
    # Importing a submodule binds its name (`load`, `generate`) on this package,
    # so the functions are bound over them afterwards.
    if name == "load":
        from .load import load

        globals()["load"] = load
    elif name in ("generate", "stream_generate"):
        from .generate import generate, stream_generate

        globals().update(generate=generate, stream_generate=stream_generate)
    elif name == "PromptCache":
        from .prompt_cache import PromptCache

        globals()["PromptCache"] = PromptCache
    else:
        raise AttributeError(f"module 'mlx_vlm_port' has no attribute {name!r}")
    return globals()[name]
