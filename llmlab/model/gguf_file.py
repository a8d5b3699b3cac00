"""A fast GGUF reader: metadata and tensor index in pure Python, tensor data as a numpy memmap.

`gguf.GGUFReader` builds a numpy view per array element, which takes ~6 s for a 49k-token
vocabulary; this reader parses the same layout (GGUF v2/v3, little-endian) in well under a
second. Quantization types and dequantization come from the `gguf` package; Q4_0, Q4_1 and
Q8_0 and the K-quants Q4_K/Q5_K/Q6_K are dequantized by `llmlab.kernels.ggml` (vectorised torch), everything
else with gguf.quants.
Tested against gguf.GGUFReader field by field.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmlab.errors import UserError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
       7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order (outermost first), i.e. GGML dims reversed
    qtype: int
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"GGUF file not found: {self.path}")
        try:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
            self._parse(gguf)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    def _parse(self, gguf) -> None:
        buf = self._data
        raw = memoryview(buf)
        pos = 0

        def take(fmt: str):
            nonlocal pos
            size = struct.calcsize(fmt)
            if pos + size > len(buf):
                raise UserError(f"{self.path}: truncated GGUF header")
            v = struct.unpack_from(fmt, raw, pos)
            pos += size
            return v[0] if len(v) == 1 else v

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            s = bytes(raw[pos:pos + n]).decode("utf-8", errors="replace")
            pos += n
            return s

        def value(vtype: int):
            nonlocal pos
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                etype, n = take("<I"), take("<Q")
                if etype == _STRING:
                    return [string() for _ in range(n)]
                if etype in _NP:
                    arr = np.frombuffer(raw, dtype=_NP[etype], count=n, offset=pos)
                    pos += arr.nbytes
                    return arr.tolist()
                return [value(etype) for _ in range(n)]
            if vtype not in _SCALARS:
                raise UserError(f"{self.path}: unknown GGUF value type {vtype}")
            return take(_SCALARS[vtype])

        if bytes(raw[:4]) != GGUF_MAGIC:
            raise UserError(f"{self.path}: not a GGUF file (bad magic {bytes(raw[:4])!r})")
        pos = 4
        self.version = take("<I")
        if self.version not in (2, 3):
            raise UserError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors, n_kv = take("<Q"), take("<Q")
        self.fields: dict = {}
        for _ in range(n_kv):
            key = string()
            self.fields[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            ndim = take("<I")
            dims = [take("<Q") for _ in range(ndim)]
            qtype, off = take("<I"), take("<Q")
            infos.append((name, dims, qtype, off))
        align = int(self.fields.get("general.alignment", 32))
        start = (pos + align - 1) // align * align
        self.tensors: list[TensorInfo] = []
        for name, dims, qtype, off in infos:
            try:
                qt = gguf.GGMLQuantizationType(qtype)
            except ValueError:
                raise UserError(f"{self.path}: tensor {name} has unknown type {qtype}") from None
            block, type_size = gguf.GGML_QUANT_SIZES[qt]
            n = int(np.prod(dims)) if dims else 1
            nbytes = n // block * type_size
            if start + off + nbytes > len(buf):
                raise UserError(f"{self.path}: truncated (tensor {name} runs past the end of the file)")
            self.tensors.append(TensorInfo(name, tuple(reversed(dims)), qtype, start + off, nbytes))

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def raw(self, info: TensorInfo) -> torch.Tensor:
        """The tensor's bytes as stored (uint8, a copy)."""
        return torch.from_numpy(np.array(self._data[info.offset:info.offset + info.nbytes]))

    def blocks(self, info: TensorInfo):
        """The tensor as a `llmlab.kernels.ggml.QuantWeight` (rows = all but the last dim), or
        None if its type is not one kept as blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)."""
        import gguf

        from llmlab.kernels.ggml import FORMATS, QuantWeight
        name = gguf.GGMLQuantizationType(info.qtype).name
        if name not in FORMATS:
            return None
        k = info.shape[-1]
        return QuantWeight.from_gguf(name, self.raw(info), (int(np.prod(info.shape)) // k, k))

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """Dequantized fp32 tensor in PyTorch shape order."""
        import gguf

        raw = self._data[info.offset:info.offset + info.nbytes]
        qt = gguf.GGMLQuantizationType(info.qtype)
        q = self.blocks(info)
        if q is not None:  # Q4_0 / Q4_1 / Q8_0: one implementation of the formats (llmlab.quant)
            w = q.dequantize()
        elif qt.name == "F32":
            w = torch.from_numpy(np.array(raw).view(np.float32))
        elif qt.name == "F16":
            w = torch.from_numpy(np.array(raw).view(np.float16)).float()
        else:
            w = torch.from_numpy(np.asarray(gguf.quants.dequantize(np.array(raw), qt), dtype=np.float32).copy())
        return w.reshape(info.shape)
