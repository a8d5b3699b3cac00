"""Data-parallel setup under `torchrun` (env RANK / WORLD_SIZE / LOCAL_RANK), as in nanoGPT.

gloo on CPU, nccl on CUDA. Each rank holds a full model replica; DDP all-reduces (averages)
gradients, so world_size ranks with per-rank batch b equal one process with batch world_size * b.
Only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (or already joined); else single process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def all_gather_bytes(data: bytes, info: DistInfo) -> list[bytes]:
    """Gather one byte string per rank (no pickle): lengths first, then padded uint8 tensors."""
    if not info.enabled:
        return [data]
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(list(data), dtype=torch.uint8, device=dev)
    n = torch.tensor([t.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = torch.zeros(m, dtype=torch.uint8, device=dev)
    padded[:t.numel()] = t
    out = [torch.zeros(m, dtype=torch.uint8, device=dev) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return [bytes(o[:int(s.item())].cpu().tolist()) for o, s in zip(out, sizes)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
