"""CLI verb: `llmlab serve` (OpenAI-compatible API + web chat on one port)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.command import Verb
from llmlab.errors import UserError


@dataclass
class ServeConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    served_model_name: str = field(default="", metadata={"help": "the id clients send as 'model' (default: model)"})
    host: str = "127.0.0.1"
    port: int = 8000
    max_num_seqs: int = field(default=32, metadata={"help": "sequences decoded together per step"})
    num_blocks: int = field(default=0, metadata={"help": "KV cache blocks (0: max_num_seqs * 512 tokens)"})
    block_size: int = 16
    prefill_chunk: int = field(default=512, metadata={"help": "chunked prefill: tokens of one prompt per step"})
    max_prefill_tokens: int = field(default=1024, metadata={"help": "prompt tokens prefilled per step, all requests"})
    preempt: str = field(default="swap", metadata={"help": "when blocks run out: swap or recompute"})
    prefix_caching: bool = True
    max_pending: int = field(default=128, metadata={"help": "requests queued or running; beyond: HTTP 429"})
    max_tokens_default: int = field(default=256, metadata={"help": "completion cap when a request sets none"})
    device: str = "auto"
    dtype: str = "auto"


def build(cfg: ServeConfig):
    """-> (FastAPI app, EngineWorker), model loaded; the worker thread is started."""
    from llmlab.infer.engine import Engine
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.serve.app import create_app
    from llmlab.serve.worker import EngineWorker

    if cfg.preempt not in ("swap", "recompute"):
        raise UserError(f"preempt: expected 'swap' or 'recompute', got '{cfg.preempt}'")
    for key in ("max_num_seqs", "block_size", "prefill_chunk", "max_prefill_tokens", "max_pending", "max_tokens_default"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if cfg.prefill_chunk > cfg.max_prefill_tokens:
        raise UserError(f"prefill_chunk ({cfg.prefill_chunk}) must be <= max_prefill_tokens ({cfg.max_prefill_tokens})")
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    engine = Engine(model, tok, num_blocks=cfg.num_blocks or None, block_size=cfg.block_size,
                    max_num_seqs=cfg.max_num_seqs, prefill_chunk=cfg.prefill_chunk,
                    max_prefill_tokens=cfg.max_prefill_tokens, preempt=cfg.preempt, prefix_caching=cfg.prefix_caching)
    worker = EngineWorker(engine, cfg.max_pending).start()
    app = create_app(worker, tok, cfg.served_model_name or cfg.model, cfg.max_tokens_default)
    return app, worker


def run_serve(cfg: ServeConfig) -> int:
    import uvicorn

    from llmlab.log import get_logger

    app, _ = build(cfg)
    get_logger().info(f"serving {cfg.served_model_name or cfg.model} on http://{cfg.host}:{cfg.port} "
                      f"(web chat at /, OpenAI API at /v1)")
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=30)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e}") from None
    return 0


VERBS = {
    "serve": Verb(ServeConfig, run_serve, "OpenAI-compatible server (/v1/chat/completions, /v1/completions) + web chat",
                  "llmlab serve configs/serve_smollm2.yaml port=8000"),
}
