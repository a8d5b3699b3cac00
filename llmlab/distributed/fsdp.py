"""ZeRO-3 through FSDP2 (`torch.distributed.fsdp.fully_shard`; Zhao et al. 2023, "PyTorch FSDP").

Each parameter is a DTensor sharded on dim 0 across the ranks; a block's parameters are
all-gathered just before its forward, freed after it (reshard_after_forward), all-gathered again
for its backward, and its gradients reduce-scattered so each rank keeps 1/N of weights, gradients
and Adam states: (w + g + K) psi / N per rank, at 3 psi of traffic per step (ZeRO sec. 7).

    rank 0: [W0a | W1a | ...]   forward of block i:  all-gather Wi  -> compute -> free
    rank 1: [W0b | W1b | ...]   backward of block i: all-gather Wi  -> grads -> reduce-scatter

Mixed precision: `param_dtype` is what forward/backward compute in (bf16), `reduce_dtype` what
gradients are reduced in (fp32); the sharded master weights and Adam states stay fp32.
CPU offload keeps the shards and the optimizer step on the CPU (useful only with a GPU).
"""
from __future__ import annotations

import torch
from torch import nn

_DTYPES = {"": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shard_model(model: nn.Module, param_dtype: str = "", cpu_offload: bool = False, mesh=None) -> nn.Module:
    """fully_shard every Transformer block, then the root (embeddings, final norm, tied LM head)."""
    if cpu_offload and not torch.cuda.is_available():
        from llmlab.errors import UserError
        raise UserError("fsdp_cpu_offload=true needs a GPU (it pins host memory); on CPU the shards already "
                        "live in host memory: leave it false")
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=_DTYPES[param_dtype], reduce_dtype=torch.float32 if param_dtype else None)
    kw = {"mp_policy": mp, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    if mesh is not None:
        kw["mesh"] = mesh
    for block in model.model.layers:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def local_bytes(tensors) -> int:
    """Bytes of the local shards (DTensor) or whole tensors this rank holds."""
    n = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        n += t.numel() * t.element_size()
    return n
