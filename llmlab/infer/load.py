"""Load a model and its tokenizer together from one reference (packaged name, .gguf, or HF dir)."""
from __future__ import annotations

import time

from llmlab.device import num_threads, resolve_device, resolve_dtype, setup_threads
from llmlab.log import get_logger


def load_model_and_tokenizer(ref: str, device: str = "auto", dtype: str = "auto"):
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import load_tokenizer

    setup_threads()
    dev = resolve_device(device)
    t0 = time.perf_counter()
    # dequantizing/copying weights is memory-bound: one thread reads as fast as two, and on a
    # shared machine each 2-thread op can wait a scheduler slice for the other core (docs/LOG.md)
    with num_threads(1):
        model, path = load_model(ref, resolve_dtype(dtype, dev))
        tok = load_tokenizer(path)
    get_logger().info(f"loaded {ref} ({model.num_params() / 1e6:.1f}M params) in {time.perf_counter() - t0:.1f}s")
    return model.to(dev), tok
