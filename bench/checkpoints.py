"""Build and cache the benchmark checkpoints and images; no download.

- `f32`: a full-size random-weight LFM2.5-VL-450M in the Hugging Face layout,
  float32, written by `tests/tiny_checkpoint.py` (seeded, deterministic).
- `q8` / `q4`: that checkpoint quantized (affine, group 64, vision tower and
  projector included), in the mlx-vlm layout that both implementations load.
- `smol-f32` / `smol-q4`: the same for a full-size random SmolVLM-256M
  (`tests/tiny_idefics3.py`), its processor set to longest_edge 1024 (a 512²
  image: 2x2 tiles + the global view, 320 image tokens; the checkpoint default
  2048 would give 17 views) and rope_theta spelled where mlx-vlm reads it.
  Made by `python -m quantize SRC --bits N --out DST` when that command exists
  and succeeds, otherwise by `mlx_vlm_port.quant.quantize_model` + a plain
  mlx-vlm-style save (weights + config with a `quantization` section).

A folder counts as built only once its `.bench-complete` marker is written, so
an interrupted build is redone on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-vlm-port" / "bench"
MARKER = ".bench-complete"
SEED = 0
VERSION = 1  # bump when the way checkpoints are built changes
CHECKPOINTS = {"f32": None, "q8": 8, "q4": 4, "smol-f32": None, "smol-q4": 4}  # name -> bits (None: float32)
SMOL_BENCH = dict(text_overrides={"rope_parameters": None, "rope_theta": 100000.0},
                  processor_overrides={"size": {"longest_edge": 1024}})
GROUP_SIZE = 64
COPY_SUFFIXES = (".json", ".jinja", ".txt", ".model")


def folder(cache: Path, name: str) -> Path:
    if name.startswith("smol-"):
        return Path(cache) / f"smolvlm-256m-random-s{SEED}-{name.removeprefix('smol-')}"
    return Path(cache) / f"lfm25-vl-450m-random-s{SEED}-{name}"


def is_built(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def _finish(path: Path, how: str, seconds: float) -> None:
    (path / MARKER).write_text(json.dumps({"version": VERSION, "how": how, "seconds": round(seconds, 1)}) + "\n")


def build_f32(path: Path, name: str) -> str:
    """Write the float checkpoint `name`; returns how, in words."""
    sys.path.insert(0, str(ROOT))
    if name == "smol-f32":
        from tests.tiny_idefics3 import SMOLVLM_256M, make_tiny_idefics3_checkpoint

        spec = {**SMOLVLM_256M, **SMOL_BENCH, "text_overrides": {**SMOLVLM_256M["text_overrides"],
                                                                 **SMOL_BENCH["text_overrides"]}}
        make_tiny_idefics3_checkpoint(path, seed=SEED, **spec)
        return "tests/tiny_idefics3.py make_tiny_idefics3_checkpoint(**SMOLVLM_256M), longest_edge 1024"
    from tests.tiny_checkpoint import LFM25_VL_450M, make_tiny_checkpoint

    make_tiny_checkpoint(path, seed=SEED, **LFM25_VL_450M)
    return "tests/tiny_checkpoint.py make_tiny_checkpoint(**LFM25_VL_450M)"


def _quantize_cli(src: Path, dst: Path, bits: int, log) -> bool:
    """`python -m quantize` if it exists; True when it produced a loadable folder."""
    if not (ROOT / "quantize" / "__main__.py").exists():
        return False
    cmd = [sys.executable, "-m", "quantize", str(src), "--bits", str(bits), "--out", str(dst)]
    log(f"  $ {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not list(dst.glob("*.safetensors")):
        log(f"  python -m quantize failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
        return False
    return True


def _quantize_here(src: Path, dst: Path, bits: int) -> None:
    """Fallback: quantize with the library and save in the mlx-vlm layout."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_vlm_port.load import load_model
    from mlx_vlm_port.quant import quantize_model

    model = load_model(src)
    section = quantize_model(model, bits=bits, group_size=GROUP_SIZE)
    dst.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    for f in src.iterdir():
        if f.suffix in COPY_SUFFIXES and f.name != "config.json" and not f.name.startswith("model.safetensors"):
            shutil.copy2(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    config["quantization"] = section
    config["quantization_config"] = section
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def ensure(cache: Path, name: str, log=print) -> Path:
    """The folder of checkpoint `name` (a key of CHECKPOINTS), built if needed."""
    path = folder(cache, name)
    if is_built(path):
        return path
    if path.exists():
        shutil.rmtree(path)
    bits = CHECKPOINTS[name]
    tic = time.perf_counter()
    if bits is None:
        log(f"building {path} (float32, random weights, seed {SEED}) ...")
        # In a child process: on Linux a child's ru_maxrss starts at its parent's RSS at fork,
        # so a parent that had held the random weights would inflate every later peak-memory figure.
        code = (f"from bench.checkpoints import build_f32; from pathlib import Path; "
                f"print(build_f32(Path({str(path)!r}), {name!r}))")
        how = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    else:
        src = ensure(cache, "smol-f32" if name.startswith("smol-") else "f32", log)
        log(f"building {path} ({bits}-bit, group {GROUP_SIZE}) ...")
        if _quantize_cli(src, path, bits, log):
            how = f"python -m quantize {src.name} --bits {bits}"
        else:
            if path.exists():
                shutil.rmtree(path)
            # In a child process: the parent does not import MLX (nor hold the model).
            code = (f"from bench.checkpoints import _quantize_here; from pathlib import Path; "
                    f"_quantize_here(Path({str(src)!r}), Path({str(path)!r}), {bits})")
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            how = f"mlx_vlm_port.quant.quantize_model(bits={bits}, group_size={GROUP_SIZE}) + mlx-vlm-layout save"
    _finish(path, how, time.perf_counter() - tic)
    log(f"  done in {time.perf_counter() - tic:.0f} s ({how})")
    return path


def how_built(path: Path) -> str:
    try:
        return json.loads((path / MARKER).read_text()).get("how", "?")
    except (OSError, ValueError):
        return "?"


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# ---------------------------------------------------------------------------
# Images and the children's environment
# ---------------------------------------------------------------------------

# name -> (width, height, seed); "…w" = the warm request's image: same size (so the same
# token count), other pixels, so no reuse of the first request's image work can apply.
IMAGES = {"512": (512, 512, 1), "1024": (1024, 1024, 2), "512w": (512, 512, 11), "1024w": (1024, 1024, 12)}


def ensure_image(cache: Path, name: str) -> Path:
    w, h, seed = IMAGES[name]
    path = Path(cache) / "images" / f"synthetic-{w}x{h}-s{seed}.png"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from tests.images import synthetic_image

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        synthetic_image(w, h, seed).save(tmp)
        tmp.replace(path)
    return path


OPENBLAS = ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0")


def blas_library(choice: str) -> str | None:
    """The BLAS both sides' children preload: "auto" = the one our package picks
    itself (mlx_vlm_port._blas, e.g. pip's MKL before the system OpenBLAS),
    "openblas" = the system OpenBLAS, "none", or a path."""
    if choice == "none" or not sys.platform.startswith("linux"):
        return None
    if choice == "openblas":
        return next((p for p in OPENBLAS if os.path.exists(p)), None)
    if choice == "auto":
        code = "from mlx_vlm_port import _blas; print((_blas.candidates() or [''])[0])"
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
        return r.stdout.strip() or None
    if not os.path.exists(choice):
        raise SystemExit(f"--blas {choice}: no such file")
    return choice


def child_env(blas: str | None) -> dict:
    """Environment of every child: the same BLAS preloaded on both sides (LD_PRELOAD,
    and MLX_VLM_PORT_BLAS so ours picks that one too), the repository importable, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    if blas:
        env["LD_PRELOAD"] = " ".join(p for p in (blas, env.get("LD_PRELOAD")) if p)
        env["MLX_VLM_PORT_BLAS"] = blas
    else:
        env["MLX_VLM_PORT_NO_BLAS"] = "1"
    return env


def _tensor_sizes(path: Path) -> dict:
    """name -> bytes, from the safetensors headers (no tensor is read)."""
    import struct

    sizes = {}
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                sizes[name] = meta["data_offsets"][1] - meta["data_offsets"][0]
    return sizes


def lm_bytes(path: Path) -> int:
    """Bytes of weights one decode step reads: every language-model tensor, with the
    output head counted in full (the tied embedding when there is no lm_head; the
    embedding lookup itself reads one row and is not counted when the head is separate).
    Quantized tensors count packed weights + scales + biases as stored."""
    sizes = _tensor_sizes(path)
    lm = {k: v for k, v in sizes.items()
          if k.startswith(("model.language_model.", "model.text_model.", "language_model.", "lm_head."))}
    head = {k: v for k, v in lm.items() if "lm_head." in k}
    embed = {k: v for k, v in lm.items() if ".embed_tokens." in k}
    config = json.loads((path / "config.json").read_text())
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings")) is not False
    if tied or not head:
        return sum(v for k, v in lm.items() if k not in head)
    return sum(v for k, v in lm.items() if k not in embed)
