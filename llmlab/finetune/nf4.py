"""NF4 lives in `llmlab.quant.nf4` (one implementation for QLoRA and post-training quantization);
this name is kept so existing imports keep working."""
from llmlab.quant.nf4 import NF4_LEVELS, NF4Tensor, nf4_levels_from_normal, quantize_int4_absmax, quantize_nf4

__all__ = ["NF4_LEVELS", "NF4Tensor", "nf4_levels_from_normal", "quantize_int4_absmax", "quantize_nf4"]
