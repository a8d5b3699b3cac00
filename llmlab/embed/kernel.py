"""Build and load the C training kernel `train_kernel.c` (compiled with `cc` on first use and
cached, by the same helper as llmlab/kernels/build.py). No compiler, a failed build or
LLMLAB_NO_KERNELS=1: `load()` returns None and training uses llmlab/embed/reference.py (same
algorithm in Python, about 1000x slower; one warning).
"""
from __future__ import annotations

import ctypes
from pathlib import Path


SRC = Path(__file__).with_name("train_kernel.c")
_LIB: list = []

_p, _i64, _i32, _f32, _u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_uint64


class W2VArgs(ctypes.Structure):
    """Mirror of the C struct W2VArgs (same field order)."""
    _fields_ = [("syn0", _p), ("syn1", _p), ("syn1neg", _p), ("dim", _i64),
                ("ids", _p), ("sent_starts", _p), ("job_starts", _p), ("njobs", _i64),
                ("keep", _p), ("alias_prob", _p), ("alias_idx", _p), ("vocab_size", _i64),
                ("codes", _p), ("points", _p), ("codelens", _p), ("max_code", _i64),
                ("sub_start", _p), ("sub_idx", _p),
                ("sg", _i32), ("hs", _i32), ("negative", _i32), ("window", _i32), ("cbow_mean", _i32),
                ("nthreads", _i32), ("alpha", _f32), ("min_alpha", _f32),
                ("total_words", _i64), ("words_before", _i64), ("seed", _u64), ("trained", _i64)]


def _open():
    from llmlab.kernels.build import build

    lib = ctypes.CDLL(str(build(SRC)))
    lib.llmlab_w2v_epoch.argtypes = [ctypes.POINTER(W2VArgs)]
    lib.llmlab_w2v_epoch.restype = ctypes.c_int
    lib.llmlab_ft_hash.argtypes = [ctypes.c_char_p, _i64]
    lib.llmlab_ft_hash.restype = ctypes.c_uint32
    lib.llmlab_ft_ngrams.argtypes = [ctypes.c_char_p, _i64, _i32, _i32, ctypes.c_uint32, _p, _i64]
    lib.llmlab_ft_ngrams.restype = _i64
    lib.llmlab_glove_epoch.argtypes = [_p, _p, _p, _p, _p, _p, _p, _p, _p, _i64, _i64, _f32, _i32]
    lib.llmlab_glove_epoch.restype = ctypes.c_double
    lib.llmlab_uniform_init.argtypes = [_p, _i64, _u64, _f32, _i32]
    lib.llmlab_uniform_init.restype = None
    return lib


def load():
    """The compiled library (ctypes.CDLL), or None (warned once)."""
    from llmlab.kernels.build import load_cached

    return load_cached(_LIB, _open, "embedding kernel unavailable, training in Python (slow)")
