"""Sizes and bits per weight of a checkpoint, from its safetensors headers.

Only the JSON headers are read, so this is instant even for large checkpoints
and counts exactly what is stored: packed weights, scales, biases, floats.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from mlx_vlm_port.checkpoint import layer_quantization, quantization_section, read_json, weight_files

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {name: Tensor(info["dtype"], tuple(info["shape"]), info["data_offsets"][1] - info["data_offsets"][0])
            for name, info in header.items() if name != "__metadata__"}


def read_tensors(folder: Path) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for f in weight_files(folder):
        tensors.update(read_header(f))
    return tensors


@dataclass
class Stats:
    file_bytes: int  # every file in the folder
    tensor_bytes: int  # tensor data in the safetensors files
    params: int  # logical weights (a packed layer counts its unpacked out × in)
    quantized_bytes: int  # weight + scales + biases of the quantized layers
    quantized_params: int
    bits: dict[str, int]  # quantized layer path → bits

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.params, 1)

    @property
    def quantized_bits_per_weight(self) -> float:
        return 8 * self.quantized_bytes / max(self.quantized_params, 1)


def checkpoint_stats(folder: str | Path) -> Stats:
    folder = Path(folder)
    qcfg = quantization_section(read_json(folder / "config.json")) or {}
    tensors = read_tensors(folder)
    params = qbytes = qparams = 0
    bits: dict[str, int] = {}
    for name, t in tensors.items():
        layer = name.rsplit(".", 1)[0]
        if f"{layer}.scales" not in tensors:
            params += t.size
            continue
        if name.endswith(".weight"):  # packed: the scales say how many groups, the config how wide each is
            p = layer_quantization(qcfg, layer)
            logical = t.shape[0] * tensors[f"{layer}.scales"].shape[-1] * p["group_size"]
            params += logical
            qparams += logical
            bits[layer] = p["bits"]
        if name.rsplit(".", 1)[1] in ("weight", "scales", "biases"):
            qbytes += t.nbytes
        else:  # a quantized Linear's float bias
            params += t.size
    file_bytes = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return Stats(file_bytes, sum(t.nbytes for t in tensors.values()), params, qbytes, qparams, bits)


def dominant_float_dtype(folder: Path) -> str | None:
    """The float dtype holding most bytes (the checkpoint's storage dtype), e.g. "BF16"."""
    by_dtype: dict[str, int] = {}
    for t in read_tensors(folder).values():
        if t.dtype in FLOAT_DTYPES:
            by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes
    return max(by_dtype, key=by_dtype.get) if by_dtype else None
