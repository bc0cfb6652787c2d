"""A minimal safetensors writer/reader (numpy only), so the test fixtures need
neither torch nor the safetensors package."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_ST_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_ST_DTYPES_INV = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[np.dtype(arr.dtype.name)],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hbytes)))
        fh.write(hbytes)
        for raw in blobs:
            fh.write(raw)


def read_safetensors(path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        dt = _ST_DTYPES_INV[info["dtype"]]
        out[name] = np.frombuffer(data[base + s : base + e], dtype=dt).reshape(info["shape"]).copy()
    return out
