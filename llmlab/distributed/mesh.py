"""Combined data x tensor parallel on a 2-D `DeviceMesh` (Megatron's 2-D layout; torchtitan's
`init_device_mesh`). Ranks form a grid: each row is a tensor-parallel group holding one split
model, each column a data-parallel group whose members see different micro-batches and average
their gradients:

            tp ->
    dp   [ r0  r1 ]     r0, r1: one model split in two (TP group), batch shard 0
    |    [ r2  r3 ]     r2, r3: the same split,                batch shard 1
    v                   r0 + r2 and r1 + r3 average gradients (DP groups)
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from llmlab.errors import UserError


def data_tensor_mesh(dp: int, tp: int):
    from torch.distributed.device_mesh import init_device_mesh
    if dp * tp != dist.get_world_size():
        raise UserError(f"mesh dp={dp} x tp={tp} needs {dp * tp} processes, have {dist.get_world_size()}")
    return init_device_mesh("cpu" if not torch.cuda.is_available() else "cuda", (dp, tp), mesh_dim_names=("dp", "tp"))


def average_gradients(params, group) -> None:
    """Data-parallel step of the mesh: mean of each gradient over the DP group."""
    n = dist.get_world_size(group)
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad /= n
