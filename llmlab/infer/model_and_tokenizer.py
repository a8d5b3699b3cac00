"""A model and its tokenizer from one reference, for every stage that needs both (generate, chat,
serve, eval, alignment, Self-Instruct). It sits downstream of `llmlab.model.load` (weights) and
`llmlab.tokenizer.bpe` (tokenizers), so neither stage imports the other."""
from __future__ import annotations

import time

from llmlab.device import num_threads, resolve_device, resolve_dtype, setup_threads
from llmlab.errors import UserError
from llmlab.log import get_logger
from llmlab.model.load import load_model, resolve_model_path
from llmlab.tokenizer.bpe import load_tokenizer


def load_model_and_tokenizer(ref: str, device: str = "auto", dtype: str = "auto", tokenizer: str = ""):
    """-> (model on `device`, tokenizer). The tokenizer is the one beside the model (or in the GGUF),
    or `tokenizer` (another model reference) when given; UserError when there is none."""
    setup_threads()
    dev = resolve_device(device)
    t0 = time.perf_counter()
    # dequantizing/copying weights is memory-bound: one thread reads as fast as two, and on a
    # shared machine each 2-thread op can wait a scheduler slice for the other core (docs/LOG.md)
    with num_threads(1):
        model, path = load_model(ref, resolve_dtype(dtype, dev))
        try:
            tok = load_tokenizer(resolve_model_path(tokenizer) if tokenizer else path)
        except FileNotFoundError as e:
            raise UserError(f"no tokenizer found for model '{ref}' ({e}); pass tokenizer=<model with one>") from None
    get_logger().info(f"loaded {ref} ({model.num_params() / 1e6:.1f}M params) in {time.perf_counter() - t0:.1f}s")
    return model.to(dev), tok
