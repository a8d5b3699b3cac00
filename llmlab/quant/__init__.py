"""Quantized weights: GGUF block formats kept as blocks and multiplied without an fp32 copy."""
