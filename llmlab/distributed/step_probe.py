"""One strategy on the current process group, measured beside llmlab.calc: model-state bytes per
rank, peak bytes during a step, bytes sent by collectives, tokens/s and the loss trajectory.
Used by tests/test_distributed_*.py and benchmarks/distributed.py (through launch.spawn)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from llmlab.calc import comm, memory
from llmlab.distributed.measure import CommCounter, live_bytes, peak_bytes, quiet_warnings

STAGE = {"ddp": 0, "zero1": 1, "zero2": 2, "fsdp": 3}


def global_batch(vocab: int, batch: int, seq: int, step: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + step)
    t = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def run_strategies(strategies: list[str], *args, **kw) -> list[dict]:
    """run_strategy for each strategy in turn, on the same process group (one process start)."""
    return [run_strategy(s, *args, **kw) for s in strategies]


def run_strategy(strategy: str, model_kw: dict, global_bs: int, seq: int, steps: int = 3, lr: float = 3e-3) -> dict:
    from llmlab.distributed.loop import _clip, _full_state, _wrap
    from llmlab.model import ModelConfig, Transformer
    from llmlab.train import distributed as D
    from llmlab.train.config import TrainConfig
    info = D.setup(torch.device("cpu"))
    rank, world = info.rank, info.world_size
    if global_bs % world:
        raise ValueError(f"global batch {global_bs} is not divisible by {world} ranks")
    # "fsdp:bf16" = FSDP2 with a bf16 MixedPrecisionPolicy, "fsdp:offload" = with CPUOffloadPolicy
    strategy, _, option = strategy.partition(":")
    cfg = TrainConfig(strategy=strategy, learning_rate=lr, max_steps=steps, device="cpu",
                      fsdp_param_dtype="bf16" if option == "bf16" else "", fsdp_cpu_offload=option == "offload")
    torch.manual_seed(0)
    raw = Transformer(ModelConfig(**model_kw))
    n_params = sum(p.numel() for p in raw.parameters())
    with quiet_warnings():
        fwd, opt = _wrap(raw, cfg, info)
    counter = CommCounter()
    if strategy == "ddp" and info.enabled:
        fwd.register_comm_hook(None, counter.ddp_hook())
    b = global_bs // world
    state = {}

    def one_step(i: int, measure: bool = False) -> float:
        x, y = global_batch(raw.config.vocab_size, global_bs, seq, i % 2)  # 2 batches in turn: the loss falls
        x, y = x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]
        loss = F.cross_entropy(fwd(x).flatten(0, 1), y.flatten())
        loss.backward()
        _clip(fwd, opt, cfg)
        if measure:  # model states at the optimizer step: weights, gradients, Adam moments
            inner = getattr(opt, "opt", opt)
            grads = [p.grad for p in fwd.parameters()] + [g.own.grad for g in getattr(opt, "groups", [])]
            state["bytes"] = live_bytes(fwd.parameters(), grads,
                                        [v for st in inner.state.values() for v in st.values() if v.dim() > 0])
        opt.step()
        if strategy in ("ddp", "zero1"):  # their gradient buffers stay allocated between steps
            state["grad_buffers"] = [p.grad for p in fwd.parameters()]
        opt.zero_grad()
        return float(D.all_reduce_mean(loss.detach(), info))

    losses = [one_step(0)]  # first step creates the Adam states
    before = live_bytes(fwd.parameters(), state.get("grad_buffers", []),
                        [v for st in getattr(opt, "opt", opt).state.values() for v in st.values() if v.dim() > 0])
    with counter:
        counter.bytes = 0.0
        peak, loss = peak_bytes(lambda: one_step(1, measure=True))
        sent = counter.bytes
    losses.append(loss)
    t = time.perf_counter()
    for i in range(2, steps):
        losses.append(one_step(i))
    dt = time.perf_counter() - t
    full = _full_state(raw, cfg, info)
    sb = memory.bytes_per_param("fp32")
    return {"strategy": strategy + (f":{option}" if option else ""), "rank": rank, "world": world, "losses": losses,
            "state_bytes": state["bytes"], "state_pred": memory.per_rank_state_bytes(n_params, world, STAGE[strategy], sb),
            "peak_bytes": before + peak, "comm_bytes": sent,
            "comm_pred": comm.step_volume(n_params, world, STAGE[strategy], 4),
            "tokens_per_s": (steps - 2) * global_bs * seq / dt if steps > 2 and dt > 0 else 0.0,
            "weights": {k: v.detach().clone() for k, v in full.items()} if rank == 0 else None}
