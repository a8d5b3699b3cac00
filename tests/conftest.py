"""Shared test fixtures. Heavy objects (SmolLM2 weights, tokenizer) load once per session."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmlab.device import setup_threads  # noqa: E402

setup_threads()


@pytest.fixture(scope="session")
def smollm2_path():
    from llmlab.model.load import packaged_path
    return packaged_path("smollm2")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """Our Transformer with SmolLM2-135M-Instruct weights (fp32, eval mode)."""
    from llmlab.model.gguf_io import load_gguf
    return load_gguf(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from llmlab.tokenizer.bpe import load_tokenizer
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path):
    """transformers' own LlamaForCausalLM, dequantized from the same GGUF by transformers itself."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.fixture
def tiny_config():
    from llmlab.model.config import ModelConfig
    return ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer GQA LLaMA (vocabulary 97) for the engine, paged-cache and prefix-cache tests;
    a test module may define its own `tiny`."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)
    return Transformer(cfg).eval()
