"""Training checkpoints: atomic, pickle-free, verified before loading.

Layout of `<output_dir>/checkpoint-<step>/`:
  model/                  HF-style model dir (config.json + model.safetensors), loadable on its own
  optimizer.safetensors   AdamW moments and step counts, keyed "state.<param index>.<name>"
  rng.safetensors         torch CPU (and CUDA) generator states of every rank, as uint8 tensors
  trainer_state.json      step, optimizer param groups, data-loader positions, spike-guard stats,
                          Python/NumPy RNG states, GradScaler state, the TrainConfig
  manifest.json           size and sha256 of every other file; written last

The directory is written under a temporary name and renamed into place (llmlab.checkpoint.atomic_dir),
so a kill never leaves a half-written `checkpoint-N`. The manifest catches everything else
(truncated copy, bit rot, a file edited by hand): a checkpoint whose files do not match it is
never loaded.
"""
from __future__ import annotations

import hashlib
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from llmlab.checkpoint import atomic_dir, load_strict, load_tensors, read_json, save_tensors, write_json
from llmlab.errors import UserError
from llmlab.model.hf import save_hf_dir

MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> None:
    write_json(root / MANIFEST, {"files": {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                                           for p in _files(root)}})


def verify(root: str | Path) -> None:
    """Raise UserError unless every file listed in the manifest exists with its size and sha256."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise UserError(f"checkpoint {root}: no {MANIFEST} (incomplete or not a checkpoint); not loading it")
    try:
        files = read_json(root / MANIFEST)["files"]
    except (UserError, KeyError, TypeError) as e:
        raise UserError(f"checkpoint {root}: unreadable {MANIFEST} ({e}); not loading it") from None
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            raise UserError(f"checkpoint {root}: missing file {rel}; not loading it")
        if p.stat().st_size != meta["size"]:
            raise UserError(f"checkpoint {root}: {rel} is {p.stat().st_size} bytes, manifest says "
                            f"{meta['size']} (truncated?); not loading it")
        if _sha256(p) != meta["sha256"]:
            raise UserError(f"checkpoint {root}: {rel} does not match its sha256 (corrupt); not loading it")


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    d = Path(output_dir)
    if not d.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(out)


def latest_valid(output_dir: str | Path, log=None) -> Path | None:
    """Newest checkpoint in `output_dir` that passes `verify`; invalid ones are reported and skipped."""
    for _, p in reversed(list_checkpoints(output_dir)):
        try:
            verify(p)
            return p
        except UserError as e:
            if log:
                log.warning(f"skipping {e}")
    return None


def prune(output_dir: str | Path, keep: int) -> None:
    if keep > 0:
        for _, p in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


# --- optimizer state <-> flat tensors + JSON -------------------------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{idx}.{k}"] = t
    return tensors, sd["param_groups"]


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    if len(groups) != len(opt.param_groups) or any(len(a["params"]) != len(b["params"])
                                                  for a, b in zip(groups, opt.param_groups)):
        raise UserError("checkpoint optimizer state does not match this model's parameter groups")
    opt.load_state_dict({"state": state, "param_groups": groups})


# --- RNG -------------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Generator states: tensors (torch CPU, CUDA) and JSON (Python, NumPy)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    js = {"python": [version, list(internal), gauss],
          "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, js


def set_rng_state(tensors: dict[str, torch.Tensor], js: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    v, internal, gauss = js["python"]
    random.setstate((v, tuple(internal), gauss))
    n = js["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


# --- save / load -----------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, rng_tensors: dict[str, torch.Tensor], extra_files: dict | None = None) -> Path:
    """Atomically write one checkpoint dir (call on rank 0 only). Returns its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_hf_dir(model, tmp / "model", extra_files=extra_files)
        opt_tensors, groups = optimizer_to_flat(optimizer)
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        save_tensors(tmp / "rng.safetensors", rng_tensors)
        write_json(tmp / "trainer_state.json", {**trainer_state, "optimizer_param_groups": groups})
        write_manifest(tmp)  # last: a manifest implies every file before it is complete
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
    """Verify, then restore model weights (in place) and optimizer state.

    Returns (trainer_state dict, rng tensors dict).
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint not found: {path}")
    verify(path)
    state = load_tensors(path / "model" / "model.safetensors")
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    dev = next(model.parameters()).device
    with torch.no_grad():
        load_strict(model, {k: v.to(dev) for k, v in state.items()}, str(path / "model"))
    ts = read_json(path / "trainer_state.json")
    if optimizer is not None:
        opt = {k: v.to(dev) if k.endswith(("exp_avg", "exp_avg_sq")) else v
               for k, v in load_tensors(path / "optimizer.safetensors").items()}
        optimizer_from_flat(optimizer, opt, ts["optimizer_param_groups"])
    return ts, load_tensors(path / "rng.safetensors")
