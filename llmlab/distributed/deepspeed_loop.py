"""`llmlab train deepspeed=configs/ds_zeroN.json`: the same model, data, AdamW recipe and lr
schedule through `deepspeed.initialize` (Rasley et al. 2020; ZeRO stages 1/2/3 and CPU offload
from the JSON config). DeepSpeed is an optional extra: `pip install llmlab[deepspeed]`; on CPU it
JIT-compiles its shared-memory communication op on first use (a C++ compiler is needed).

The keys llmlab owns are filled from TrainConfig (micro-batch, accumulation, clipping); the JSON
keeps what is DeepSpeed's (zero_optimization, offload, bf16). AdamW is ours (the client optimizer,
with llmlab's weight-decay split) unless the JSON names an "optimizer".
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from llmlab.errors import UserError
from llmlab.train.trainer import TrainResult


def load_config(path: str, cfg) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"deepspeed config not found: {p}")
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    ds.update(train_micro_batch_size_per_gpu=cfg.per_device_train_batch_size,
              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
              gradient_clipping=cfg.max_grad_norm)
    ds.pop("train_batch_size", None)
    return ds


def _import_deepspeed():
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        import deepspeed
    except ImportError:
        raise UserError("deepspeed=... needs DeepSpeed: pip install 'llmlab[deepspeed]' (or pip install deepspeed)") \
            from None
    return deepspeed


def train(cfg, model, train_loader, val_loader=None, *, extra_files=None, model_flops_per_token=None) -> TrainResult:
    from llmlab.distributed.loop import _write_model, lm_loss, log_due, set_lr
    from llmlab.train.optim import build_optimizer
    from llmlab.train.reporting import Reporter
    ds_cfg = load_config(cfg.deepspeed, cfg)
    model_config = model.config.to_dict()
    deepspeed = _import_deepspeed()
    torch.manual_seed(cfg.seed)
    opt = None if "optimizer" in ds_cfg else build_optimizer(
        model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon,
        cfg.decay_norms_and_embeddings)
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg,
                                             model_parameters=None if opt is not None else model.parameters())
    rank, world = engine.global_rank, engine.world_size
    out = Path(cfg.output_dir)
    reporter = Reporter(out, cfg.report_to, 0) if rank == 0 else None
    it, step, t0, last = iter(train_loader), 0, time.perf_counter(), float("nan")
    tokens = cfg.per_device_train_batch_size * cfg.max_length * cfg.gradient_accumulation_steps * world
    try:
        while step < cfg.max_steps:
            lr = set_lr(opt, cfg, step)
            total = torch.zeros(())
            for _ in range(cfg.gradient_accumulation_steps):
                x, y = next(it)
                logits = engine(x.to(engine.device))
                loss = lm_loss(logits, y.to(engine.device))
                engine.backward(loss)  # DeepSpeed scales by 1/accumulation itself
                engine.step()  # a no-op except at the accumulation boundary
                total += loss.detach().cpu() / cfg.gradient_accumulation_steps
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(total)
                total /= world
            step, last = step + 1, float(total)
            if reporter is not None and log_due(cfg, step):
                reporter.log("train", step, loss=last, lr=lr, tokens=step * tokens, elapsed_s=time.perf_counter() - t0)
        engine.save_checkpoint(str(out), tag=f"checkpoint-{step}")
        full = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_stage() == 3 \
            else engine.module.state_dict()
        if rank == 0:  # under ZeRO-3 `model` holds only placeholders: write from the gathered weights
            _write_model(full, model_config, out / "model", extra_files)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    finally:
        if reporter is not None:
            reporter.close()
    return TrainResult(step, last, None, None, step * tokens, time.perf_counter() - t0, out)
