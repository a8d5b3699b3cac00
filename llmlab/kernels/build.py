"""Build and load the C kernel of `ggml_matmul.c` (compiled once per machine, then cached).

Why a C kernel: batch-1 decode reads every weight once per token, so its speed is the memory
bandwidth over the weights' bytes. SmolLM2's GGUF stores them as Q4_1/Q8_0 blocks (~0.6 bytes
per weight); dequantized to fp32 they are 4 bytes (538 MB, ~55 ms per token at the ~10 GB/s
one core streams here). The kernel decodes blocks into L1 and multiplies there, so it reads
~0.75 bytes per weight. torch has no CPU matmul over these formats.

The library is compiled with the system C compiler (`cc`, -O3 -march=native -fopenmp) into
`$LLMLAB_CACHE` (default `~/.cache/llmlab`) under a name that hashes the source and the CPU's
flags. No compiler, or a failed build: `load()` returns None and callers use the fp32 weights
(one warning). LLMLAB_KERNEL_ISA picks the instruction set: `native` (default: every feature this
CPU has, AVX-512 included), `avx2` (AVX2+FMA only) or `portable` (plain C, no SIMD intrinsics):
the tests build and check every one this CPU can run.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from llmlab.log import get_logger

SRC = Path(__file__).with_name("ggml_matmul.c")
SRC_I8 = Path(__file__).with_name("ggml_i8.c")  # int8-activation products (an option; ggml_i8.c)
_LIB: list = []  # [lib or None] once tried
_LIB_I8: list = []


def cache_dir() -> Path:
    root = os.environ.get("LLMLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmlab")
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


ISAS = {"native": ["-march=native"], "avx2": ["-mavx2", "-mfma", "-mf16c"], "portable": []}


def isa() -> str:
    name = os.environ.get("LLMLAB_KERNEL_ISA", "native") or "native"
    if name not in ISAS:
        raise RuntimeError(f"LLMLAB_KERNEL_ISA={name!r}: expected one of {', '.join(ISAS)}")
    return name


def build(src: Path = SRC, arch: str | None = None) -> Path:
    """Compile C file `src` into a cached shared library (also used by llmlab/embed/kernel.py);
    arch: a key of ISAS (default: `isa()`)."""
    arch = arch or isa()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    code = src.read_bytes()
    for name in re.findall(rb'#include "([^"]+)"', code):  # its own headers (exp_poly.h) are part of the key
        code += (src.parent / name.decode()).read_bytes()
    key = hashlib.sha256(code + _cpu_flags().encode() + platform.machine().encode()).hexdigest()[:16]
    out = cache_dir() / f"{src.stem}-{key}{'' if arch == 'native' else '-' + arch}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        cmd = [cc, "-O3", *ISAS[arch], "-fPIC", "-shared", "-fopenmp", "-o", str(tmp_so), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:  # no OpenMP support: one thread
            cmd.remove("-fopenmp")
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[:500]}")
        os.replace(tmp_so, out)  # atomic: a concurrent build never sees a half-written library
    return out


def load_cached(cache: list, open_library, unavailable: str):
    """`open_library()` once per process, kept in `cache` (a module's one-item list): the library, or
    None where it cannot be built (one warning "`unavailable`: why"). LLMLAB_NO_KERNELS=1 gives None."""
    if not cache:
        lib = None
        if os.environ.get("LLMLAB_NO_KERNELS", "") in ("", "0"):
            try:
                lib = open_library()
            except (RuntimeError, OSError) as e:
                get_logger().warning(f"{unavailable}: {e}")
        cache.append(lib)
    return cache[0]


def load():
    """The compiled library (ctypes.CDLL), or None where it cannot be built (warned once).
    LLMLAB_NO_KERNELS=1 disables it."""
    return load_cached(_LIB, open_lib, "quantized-weight kernel unavailable, using fp32 weights")


def open_lib(arch: str | None = None):
    """The kernel library built for instruction set `arch` (see ISAS), loaded with its signatures."""
    lib = ctypes.CDLL(str(build(SRC, arch)))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.llmlab_ggml_matmul.argtypes = [ctypes.c_int, p, p, p, i64, i64, p, i64, p, ctypes.c_int]
    lib.llmlab_ggml_matmul.restype = None
    lib.llmlab_ggml_gemm.argtypes = [ctypes.c_int, p, p, p, i64, i64, p, i64, p, ctypes.c_int]
    lib.llmlab_ggml_gemm.restype = ctypes.c_int
    lib.llmlab_ggml_simd.restype = ctypes.c_int
    return lib


def load_i8():
    """The int8-activation library (`ggml_i8.c`), or None where it cannot be built (warned once)."""
    return load_cached(_LIB_I8, open_i8, "int8-activation kernel unavailable, using the exact path")


def open_i8(arch: str | None = None):
    """`ggml_i8.c` built for instruction set `arch` (see ISAS), loaded with its signatures."""
    lib = ctypes.CDLL(str(build(SRC_I8, arch)))
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.llmlab_i8_matmul.argtypes = [c_int, p, p, p, i64, i64, p, i64, p, c_int]
    lib.llmlab_i8_matmul.restype = c_int
    lib.llmlab_i8_matmul_reference.argtypes = [c_int, p, p, p, i64, i64, p, i64, p]
    lib.llmlab_i8_matmul_reference.restype = c_int
    lib.llmlab_i8_quantize.argtypes = [c_int, p, i64, p, p, p]
    lib.llmlab_i8_quantize.restype = None
    lib.llmlab_i8_isa.restype = c_int
    lib.llmlab_i8_h2f.argtypes = [ctypes.c_uint16]
    lib.llmlab_i8_h2f.restype = ctypes.c_float
    lib.llmlab_i8_set_fast_quant.argtypes = [c_int]
    lib.llmlab_i8_set_fast_quant.restype = None
    lib.llmlab_i8_set_fast_quant(fast_quant())
    lib.llmlab_i8_set_one_row.argtypes = [c_int]
    lib.llmlab_i8_set_one_row.restype = None
    lib.llmlab_i8_set_one_row(one_row())
    lib.llmlab_i8_set_pf_nta.argtypes = [c_int]
    lib.llmlab_i8_set_pf_nta.restype = None
    lib.llmlab_i8_set_pf_nta(pf_nta())
    return lib


def fast_quant() -> int:
    """Does `ggml_i8.c` round the input with AVX2 and keep one row's buffers on the stack
    (LLMLAB_I8_FAST_QUANT, default on; the same bits either way)? Read when a library opens;
    `llmlab_i8_set_fast_quant` switches an open one (benchmarks/decode_overhead.py's arms)."""
    return int(os.environ.get("LLMLAB_I8_FAST_QUANT", "1") not in ("", "0"))


def one_row() -> int:
    """Does `ggml_i8.c`'s AVX2 build take batch 1's full block groups through its short path
    (LLMLAB_I8_ONE_ROW, default on; the same bits either way)? Read when a library opens;
    `llmlab_i8_set_one_row` switches an open one (benchmarks/decode_overhead.py's arms)."""
    return int(os.environ.get("LLMLAB_I8_ONE_ROW", "1") not in ("", "0"))


def pf_nta() -> int:
    """Does batch 1's weight stream in `ggml_i8.c`'s AVX2 build prefetch non-temporally (prefetchnta,
    LLMLAB_I8_PF_NTA, default on; the same values either way: a prefetch changes no result)? Read when a
    library opens; `llmlab_i8_set_pf_nta` switches an open one (benchmarks/decode_overhead.py's arms)."""
    return int(os.environ.get("LLMLAB_I8_PF_NTA", "1") not in ("", "0"))
