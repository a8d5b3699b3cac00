"""Sharded checkpoints through `torch.distributed.checkpoint` (DCP): every rank writes its own
shard file in parallel (`__<rank>_0.distcp`) and a `.metadata` index records which slice of each
tensor lives where, so a checkpoint written by N ranks loads on M ranks (DCP reshards DTensors)
or in one process (`consolidate`: the HF model dir). Alongside, rank 0 writes `trainer_state.json`
(step, every rank's data position and RNG state) and `config.json`.

DCP's `.metadata` is a pickle written by torch: load only checkpoints you wrote yourself.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from llmlab.errors import UserError

STATE = "trainer_state.json"


def save(path: Path, model_sd: dict, optim_sd: dict, trainer_state: dict, model_config: dict, is_main: bool) -> None:
    """Collective: all ranks call it. The directory is complete once trainer_state.json exists."""
    path = Path(path)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    if is_main:
        (path / "config.json").write_text(json.dumps(model_config, indent=1))
        tmp = path / (STATE + ".tmp")
        tmp.write_text(json.dumps(trainer_state))
        tmp.replace(path / STATE)  # atomic: the marker of a finished checkpoint
    if dist.is_initialized():
        dist.barrier()


def load(path: Path, model_sd: dict, optim_sd: dict) -> dict:
    """Fill model_sd / optim_sd in place from `path` (resharding as needed); return trainer state."""
    path = Path(path)
    if not (path / STATE).is_file():
        raise UserError(f"{path}: not a finished sharded checkpoint (no {STATE})")
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    return json.loads((path / STATE).read_text())


def latest(output_dir: Path) -> Path | None:
    done = [p for p in Path(output_dir).glob("checkpoint-*") if (p / STATE).is_file() and p.name[11:].isdigit()]
    return max(done, key=lambda p: int(p.name[11:]), default=None)


def consolidate(ckpt_dir: str | Path, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """One process: read a sharded checkpoint (any world size) into a full model; write the HF dir."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.transformer import Transformer, skip_init
    ckpt_dir = Path(ckpt_dir)
    cfg_file = ckpt_dir / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{ckpt_dir}: no config.json; not a checkpoint written by llmlab's parallel trainer")
    with skip_init():
        model = Transformer(ModelConfig(**json.loads(cfg_file.read_text())))
    sd = model.state_dict()
    dcp.load({"model": sd}, checkpoint_id=str(ckpt_dir))
    model.load_state_dict(sd)
    save_hf_dir(model, out_dir, extra_files=extra_files)
    return Path(out_dir)


def rng_bytes() -> list[int]:
    return torch.get_rng_state().tolist()


def set_rng(state: list[int]) -> None:
    torch.set_rng_state(torch.tensor(state, dtype=torch.uint8))
