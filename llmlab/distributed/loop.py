"""The distributed training loop for strategy=zero1 | zero2 | fsdp (and ddp, as the control), cp
(context parallel: ring attention over sequence chunks) and ep (expert parallel MoE + data parallel).

Same recipe as llmlab.train.trainer (AdamW with its weight-decay split, the lr schedule as a pure
function of the step, global-norm clipping, gradient accumulation, rank-0 logging); what changes
is who holds what: see llmlab.distributed.zero and .fsdp. Checkpoints are sharded (DCP) and
resume exactly at the same world size; FSDP checkpoints reshard to another world size.

  torchrun --nproc_per_node 2 -m llmlab.cli train data=runs/data/tokens depth=2 strategy=fsdp
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llmlab.device import resolve_device
from llmlab.errors import UserError
from llmlab.log import get_logger
from llmlab.train import distributed as D
from llmlab.train.optim import build_optimizer
from llmlab.train.reporting import Reporter
from llmlab.train.schedule import lr_factor
from llmlab.train.trainer import TrainResult

log = get_logger("llmlab.distributed")


def set_lr(opt, cfg, step: int) -> float:
    """Set the scheduled learning rate of optimizer step `step` on every param group -> it."""
    lr = cfg.learning_rate * lr_factor(step, cfg.lr_scheduler_type, cfg.max_steps, cfg.warmup_steps,
                                       cfg.min_lr_ratio, cfg.decay_ratio)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; label -100 is ignored."""
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)


def log_due(cfg, step: int) -> bool:
    return step % max(1, cfg.logging_steps) == 0 or step == cfg.max_steps


def _wrap(model, cfg, info):
    """(forward module, optimizer) for the strategy."""
    s = cfg.strategy
    if s in ("cp", "ep"):
        if not info.enabled:
            raise UserError(f"strategy={s} splits over ranks: launch with torchrun --nproc_per_node N, N >= 2")
        if s == "cp":
            from llmlab.distributed import context_parallel as cp
            cp.check(model.config, info.world_size, cfg.max_length)
            cp.enable(model)
        else:
            from llmlab.distributed import expert_parallel as ep
            ep.global_balance_f(ep.expert_parallel(model))
        return model, build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                                      cfg.adam_epsilon, cfg.decay_norms_and_embeddings)
    if s == "fsdp":
        from llmlab.distributed.fsdp import shard_model
        if info.world_size > 1 or dist.is_initialized():
            model = shard_model(model, cfg.fsdp_param_dtype, cfg.fsdp_cpu_offload)
        return model, build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                                      cfg.adam_epsilon, cfg.decay_norms_and_embeddings)
    if s in ("zero1", "zero2"):
        if not info.enabled:
            raise UserError(f"strategy={s} shards over ranks: launch with torchrun --nproc_per_node N, N >= 2 "
                            "(one process trains without a strategy)")
        from llmlab.distributed.zero import ZeroOptimizer
        return model, ZeroOptimizer(model, int(s[-1]), cfg.learning_rate, cfg.weight_decay,
                                    (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon, cfg.decay_norms_and_embeddings)
    opt = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                          cfg.adam_epsilon, cfg.decay_norms_and_embeddings)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, gradient_as_bucket_view=True), opt  # grads live in DDP's buckets: no second copy
    return model, opt


def _grad_sync(fwd, cfg, last: bool):
    if cfg.strategy == "fsdp" and hasattr(fwd, "set_requires_gradient_sync"):
        fwd.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if cfg.strategy == "ddp" and hasattr(fwd, "no_sync") and not last:
        return fwd.no_sync()
    return contextlib.nullcontext()


def _forward_loss(fwd, raw, x, y, cfg, info) -> torch.Tensor:
    """This rank's loss: the mean CE (+ MoE router losses), or under cp its chunk's share of it."""
    if cfg.strategy == "cp":
        from llmlab.distributed import context_parallel as cp
        x, y, pos = cp.shard(x, y, info.rank, info.world_size)
        return cp.chunk_loss(fwd(x, position_ids=pos), y)
    loss = lm_loss(fwd(x), y)
    aux = raw.aux_loss() if hasattr(raw, "aux_loss") else None
    return loss if aux is None else loss + aux


def _sync(raw, cfg) -> None:
    """cp / ep: their own gradient reduction (the others reduce in DDP, FSDP or ZeRO)."""
    if cfg.strategy == "cp":
        from llmlab.distributed.context_parallel import sync_gradients
        sync_gradients(raw)
    elif cfg.strategy == "ep":
        from llmlab.distributed.expert_parallel import sync_gradients
        sync_gradients(raw)


def _clip(fwd, opt, cfg) -> float:
    if cfg.strategy == "ep":  # expert slices differ by rank: their squares summed over ranks
        from llmlab.distributed.expert_parallel import clip_grad_norm_
        return clip_grad_norm_(fwd, cfg.max_grad_norm)
    if hasattr(opt, "reduce_gradients"):  # ZeRO-1/2
        opt.reduce_gradients()
        return opt.clip_grad_norm_(cfg.max_grad_norm)
    params = [p for p in fwd.parameters() if p.grad is not None]
    if cfg.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _state_dicts(fwd, raw, opt, cfg):
    """(model, optimizer) state dicts in DCP form: DTensor shards under FSDP, own slices under ZeRO."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    if cfg.strategy == "ep":
        from llmlab.distributed.expert_parallel import state_dicts
        return state_dicts(raw, opt)
    if hasattr(opt, "reduce_gradients"):
        # each rank saves its own slice's Adam states under its own key (DCP keys must be strings)
        return raw.state_dict(), {f"rank{dist.get_rank()}": {str(k): v for k, v in opt.opt.state_dict()["state"].items()}}
    return get_state_dict(raw, opt)


def _full_state(raw, cfg, info) -> dict:
    """Full (unsharded) weights; a collective under FSDP and ep."""
    if cfg.strategy == "ep":
        from llmlab.distributed.expert_parallel import full_state_dict
        return full_state_dict(raw)
    if cfg.strategy == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return raw.state_dict()


def train(cfg, model, train_loader, val_loader=None, *, extra_files: dict[str, str] | None = None,
          model_flops_per_token: float | None = None) -> TrainResult:
    """Train with cfg.strategy; every rank passes its own rank's loader (see llmlab.train.trainer)."""
    from llmlab.distributed import sharded_checkpoint as sc
    device = resolve_device(cfg.device)
    info = D.setup(device)
    if cfg.bf16 or cfg.fp16 or cfg.torch_compile:
        raise UserError(f"strategy={cfg.strategy}: use fsdp_param_dtype=bf16 for mixed precision; bf16/fp16/"
                        "torch_compile are options of the default DDP trainer")
    if info.enabled and cfg.per_device_train_batch_size < 1:
        raise UserError("per_device_train_batch_size must be >= 1")
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed + info.rank)
    raw = model.to(device).train()
    raw.gradient_checkpointing = cfg.gradient_checkpointing
    model_config = raw.config.to_dict()
    fwd, opt = _wrap(raw, cfg, info)
    step, tokens_seen = 0, 0
    if cfg.resume_from_checkpoint:
        path = sc.latest(out) if cfg.resume_from_checkpoint == "auto" else Path(cfg.resume_from_checkpoint)
        if path is not None:
            step, tokens_seen = _resume(path, fwd, raw, opt, cfg, info, train_loader)

    reporter = Reporter(out, cfg.report_to, step) if info.is_main else None
    data_ranks = 1 if cfg.strategy == "cp" else info.world_size  # cp: the ranks share each batch
    global_tokens = cfg.per_device_train_batch_size * cfg.max_length * cfg.gradient_accumulation_steps * data_ranks
    it = iter(train_loader)
    t0 = t_log = time.perf_counter()
    last_loss, val_loss = float("nan"), None
    try:
        while step < cfg.max_steps:
            lr = set_lr(opt, cfg, step)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.gradient_accumulation_steps):
                try:
                    x, y = next(it)
                except StopIteration:  # a finite loader: start another pass
                    it = iter(train_loader)
                    x, y = next(it)
                x, y = x.to(device), y.to(device)
                with _grad_sync(fwd, cfg, micro == cfg.gradient_accumulation_steps - 1):
                    loss = _forward_loss(fwd, raw, x, y, cfg, info)
                    (loss / cfg.gradient_accumulation_steps).backward()
                loss_sum += loss.detach() / cfg.gradient_accumulation_steps
            _sync(raw, cfg)
            step_loss = float(D.all_reduce_mean(loss_sum, info)) * (info.world_size if cfg.strategy == "cp" else 1)
            if not math.isfinite(step_loss):
                raise UserError(f"loss is {step_loss} at step {step}: lower learning_rate")
            grad_norm = _clip(fwd, opt, cfg)
            opt.step()
            opt.zero_grad()
            step, tokens_seen, last_loss = step + 1, tokens_seen + global_tokens, step_loss
            if reporter is not None and log_due(cfg, step):
                dt = time.perf_counter() - t_log
                reporter.log("train", step, loss=step_loss, lr=lr, grad_norm=grad_norm, tokens=tokens_seen,
                             tokens_per_s=global_tokens / dt if dt > 0 else 0.0, elapsed_s=time.perf_counter() - t0)
            t_log = time.perf_counter()
            if (cfg.save_steps and step % cfg.save_steps == 0) or step == cfg.max_steps:
                _save(out / f"checkpoint-{step}", fwd, raw, opt, cfg, info, train_loader, step, tokens_seen,
                      model_config)
        if val_loader is not None:
            val_loss = _evaluate(fwd, val_loader, cfg, info, device)
            if reporter is not None:
                reporter.log("eval", step, val_loss=val_loss)
        full = _full_state(raw, cfg, info)
        if info.is_main:
            _write_model(full, model_config, out / "model", extra_files)
        D.barrier(info)
    finally:
        if reporter is not None:
            reporter.close()
    return TrainResult(step, last_loss, val_loss, None, tokens_seen, time.perf_counter() - t0, out)


def _write_model(full: dict, model_config: dict, path: Path, extra_files) -> None:
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.transformer import Transformer, skip_init
    with skip_init():
        m = Transformer(ModelConfig(**model_config))
    m.load_state_dict({k: v.float() for k, v in full.items()})
    save_hf_dir(m, path, extra_files=extra_files)


@torch.no_grad()
def _evaluate(fwd, val_loader, cfg, info, device) -> float:
    total = torch.zeros(2, dtype=torch.float64)
    for i, (x, y) in enumerate(val_loader):
        if cfg.eval_batches and i >= cfg.eval_batches:
            break
        x, y = x.to(device), y.to(device)
        pos = None
        if cfg.strategy == "cp":  # every rank its chunk of the same windows; the sums add up
            from llmlab.distributed.context_parallel import shard
            x, y, pos = shard(x, y, info.rank, info.world_size)
        logits = fwd(x, position_ids=pos)
        n = (y != -100).sum()
        total += torch.tensor([float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten().to(device),
                                                     ignore_index=-100)) * float(n), float(n)], dtype=torch.float64)
    if info.enabled:
        dist.all_reduce(total)
    return float(total[0] / max(1.0, float(total[1])))


def _save(path, fwd, raw, opt, cfg, info, loader, step, tokens, model_config) -> None:
    from llmlab.distributed import sharded_checkpoint as sc
    local = json.dumps({"loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
                        "rng": sc.rng_bytes()}).encode()
    per_rank = [json.loads(b) for b in D.all_gather_bytes(local, info)]
    msd, osd = _state_dicts(fwd, raw, opt, cfg)
    state = {"step": step, "tokens": tokens, "world_size": info.world_size, "strategy": cfg.strategy,
             "loaders": [p["loader"] for p in per_rank], "rng": [p["rng"] for p in per_rank], "config": asdict(cfg)}
    sc.save(path, msd, osd, state, model_config, info.is_main)


def _resume(path, fwd, raw, opt, cfg, info, loader) -> tuple[int, int]:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from llmlab.distributed import sharded_checkpoint as sc
    state = json.loads((Path(path) / sc.STATE).read_text()) if (Path(path) / sc.STATE).is_file() else None
    if state is None:
        raise UserError(f"{path}: not a finished sharded checkpoint (no {sc.STATE})")
    if state["strategy"] != cfg.strategy:
        raise UserError(f"{path} was written with strategy={state['strategy']}, not {cfg.strategy}")
    same_world = state["world_size"] == info.world_size
    if cfg.strategy in ("zero1", "zero2", "ep") and not same_world:
        raise UserError(f"{path}: saved by {state['world_size']} ranks, now {info.world_size}; ZeRO-1/2 optimizer "
                        f"slices (ep: expert slices) are per rank: resume with {state['world_size']} processes (or use strategy=fsdp, "
                        "whose DTensor checkpoints reshard)")
    msd, osd = _state_dicts(fwd, raw, opt, cfg)
    sc.load(path, msd, osd)
    if cfg.strategy == "ep":
        from llmlab.distributed.expert_parallel import load_state_dicts
        load_state_dicts(raw, opt, msd, osd)
    elif hasattr(opt, "reduce_gradients"):
        raw.load_state_dict(msd)
        own = {int(k): v for k, v in osd[f"rank{dist.get_rank()}"].items()}
        opt.opt.load_state_dict({"state": own, "param_groups": opt.opt.state_dict()["param_groups"]})
    else:
        set_state_dict(raw, opt, model_state_dict=msd, optim_state_dict=osd)
    if same_world:
        if hasattr(loader, "load_state_dict") and state["loaders"][info.rank] is not None:
            loader.load_state_dict(state["loaders"][info.rank])
        sc.set_rng(state["rng"][info.rank])
    elif info.is_main:
        log.warning(f"resharded {path} from {state['world_size']} to {info.world_size} ranks: weights and Adam "
                    "states carried over; data positions are per rank, so the loaders restart")
    if info.is_main:
        log.info(f"resumed from {path} at step {state['step']}")
    return int(state["step"]), int(state["tokens"])
