"""Compiled kernels and the GGUF block formats they multiply: shared plumbing under every stage.

`ggml.py` keeps GGUF Q4_0/Q4_1/Q8_0 and K-quant Q4_K/Q5_K/Q6_K blocks and multiplies with them
(`ggml_matmul.c`, exact; `ggml_i8.c`, the int8-activation option: AVX-512 VNNI, AVX2 or portable C,
all bit-equal); `attention.py` runs decode attention over the
KV cache in C (`attention.c`); `build.py`
compiles a C source with the system compiler once per machine and caches it (also used by the
word-embedding kernel). The quantization *methods* (PTQ, GPTQ, AWQ, export) live in `llmlab/quant`.
"""
