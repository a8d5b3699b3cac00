"""Quantization methods: PTQ building blocks, NF4, GPTQ, AWQ, SmoothQuant, LLM.int8(), QAT, GGUF export.

The GGUF block formats and their C kernel, which the model loader and the engine use, are in
`llmlab/kernels` (below every stage), so loading a model never imports the quantization methods.
"""
