"""The model core: a configurable decoder-only Transformer and its weight I/O."""
from llmlab.model.config import ModelConfig
from llmlab.model.kv_cache import KVCache
from llmlab.model.transformer import Transformer, flops_per_token, num_params

__all__ = ["ModelConfig", "KVCache", "Transformer", "flops_per_token", "num_params"]
