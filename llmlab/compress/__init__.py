"""Compression: knowledge distillation and pruning (quantization is `llmlab.quant`)."""
