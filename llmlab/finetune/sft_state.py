"""SFT checkpoints, built from the pretraining trainer's pieces (llmlab.train.train_state).

Layout of `<output_dir>/checkpoint-<step>/`:
  trainable.safetensors   the parameters being trained, by name (the whole model for full SFT,
                          the adapter's own tensors, unfolded, for PEFT), so a resume is exact
  optimizer.safetensors   AdamW moments (`optimizer_to_flat`)
  rng.safetensors         torch generator state; Python/NumPy states go in trainer_state.json
  trainer_state.json      step, data position, config, optimizer param groups
  average.safetensors     the running tail average of the weights (only with average_last > 0)
  manifest.json           size + sha256 of every file, written last (`write_manifest`/`verify`)

Written into a temporary directory and renamed into place (`atomic_dir`): a kill leaves the old
checkpoint or the new one. The frozen base is not stored: resuming rebuilds it from `model=`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint import atomic_dir, check_state_dict, load_tensors, read_json, save_tensors, write_json
from llmlab.errors import UserError
from llmlab.train import train_state as ckpt


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_state(path: str | Path, model, optimizer, trainer_state: dict,
               average: dict[str, torch.Tensor] | None = None) -> Path:
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(tmp / "trainable.safetensors", trainable_state(model))
        if average is not None:
            save_tensors(tmp / "average.safetensors", average)
        opt_tensors, groups = ckpt.optimizer_to_flat(optimizer)
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        rng_tensors, rng_js = ckpt.rng_state()
        save_tensors(tmp / "rng.safetensors", rng_tensors)
        write_json(tmp / "trainer_state.json", {**trainer_state, "rng": rng_js, "optimizer_param_groups": groups})
        ckpt.write_manifest(tmp)
    return path


def load_state(path: str | Path, model, optimizer) -> dict:
    """Verify the manifest, restore trainable weights (strict names/shapes), AdamW and RNG states."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint not found: {path}")
    ckpt.verify(path)
    ts = read_json(path / "trainer_state.json")
    expected = trainable_state(model)
    got = load_tensors(path / "trainable.safetensors")
    check_state_dict(expected, got, f"{path} (was it written by another method or model?)")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(got[k].to(p.device, p.dtype))
    dev = next(iter(expected.values())).device
    opt = {k: v.to(dev) if k.endswith(("exp_avg", "exp_avg_sq")) else v
           for k, v in load_tensors(path / "optimizer.safetensors").items()}
    ckpt.optimizer_from_flat(optimizer, opt, ts["optimizer_param_groups"])
    ckpt.set_rng_state(load_tensors(path / "rng.safetensors"), ts["rng"])
    return ts


def find_resume(output_dir: str | Path, resume: str | None, log) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        path = ckpt.latest_valid(output_dir, log)
        if path is None:
            log.info(f"no valid checkpoint in {output_dir}: starting from scratch")
        return path
    return Path(resume)


def save_and_prune(output_dir: str | Path, step: int, keep: int, model, optimizer, trainer_state: dict,
                   average: dict[str, torch.Tensor] | None = None) -> Path:
    path = save_state(Path(output_dir) / f"checkpoint-{step}", model, optimizer, trainer_state, average)
    ckpt.prune(output_dir, keep)
    return path
