"""Checkpoint I/O shared by every stage: atomic writes and strict safetensors loading.

Atomic: files are written into a temporary sibling directory and renamed into place, so a
kill leaves either the old checkpoint or the new one, never a half-written one.
Strict: a missing, unexpected or mis-shaped tensor is an error that names it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import UserError


HF_DIR_FILES = ("config.json", "model.safetensors", "generation_config.json")


def check_output_parent(path: str | Path, key: str = "output") -> None:
    """Fail early (before any work) when a folder above `path` exists as a file: the output could
    never be written there (mkdir would fail only after the work)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{key}={path}: {parent} is a file, not a directory")
            return


def check_output_dir(path: str | Path, key: str = "output_dir", names=HF_DIR_FILES) -> None:
    """Fail early (before any work) when `path` exists and is not a directory, or is a directory
    `atomic_dir` would refuse to replace with one holding `names` (None: a folder the verb writes
    into, not one it replaces), or a folder above it is a file."""
    if path:
        check_output_parent(path, key)
    if path and Path(path).exists():
        if not Path(path).is_dir():
            raise UserError(f"{key}={path} exists and is not a directory")
        if names is not None:
            check_replaceable(Path(path), set(names))


def check_replaceable(path: Path, names: set[str]) -> None:
    """An existing directory is replaced only when it looks like an earlier output of the same kind
    (new entry names `names`): it is empty, or it shares a name with the new one and holds no
    sub-directory the new one lacks. So `output_dir=.` or a folder of the user's own files is
    refused, not deleted."""
    old = {p.name: p.is_dir() for p in path.iterdir()}
    foreign = sorted(n for n in old if n not in names)
    if foreign and (not set(old) & names or any(old[n] for n in foreign)):
        raise UserError(f"{path} exists and holds other files ({', '.join(foreign[:4])}"
                        f"{' ...' if len(foreign) > 4 else ''}): not replaced; choose a new path or remove it")


def _free_sibling(path: Path) -> Path:
    """`path.new`, else `path.new-2`, ...: a name beside `path` that does not exist yet."""
    kept, i = path.with_name(f"{path.name}.new"), 1
    while kept.exists():
        i += 1
        kept = path.with_name(f"{path.name}.new-{i}")
    return kept


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp dir; on success it replaces `path` (old contents removed, if `check_replaceable`),
    else it is deleted. `path` existing as a file is an error (nothing is written). A folder refused
    by `check_replaceable` only at the end (it changed during the run) keeps the finished output
    beside it (`path.new`), named in the error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output={path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():  # make data durable before the rename publishes it
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 -> what a plain mkdir would have given
        old = None
        if path.exists():
            try:
                check_replaceable(path, {p.name for p in tmp.iterdir()})
            except UserError as e:  # refused only now (the folder changed during the run): keep the finished work
                kept = _free_sibling(path)
                os.replace(tmp, kept)
                raise UserError(f"{e}; this run's output is kept at {kept}") from None
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary sibling path for a writer that takes a file name (safetensors, gguf); on a
    clean exit it is fsynced and renamed over `path` (atomic on POSIX), so a reader or a killed job sees
    the old file or the new one, never half of one; on an error it is removed and `path` is untouched.
    A unique name (mkstemp), so two writers of one path never share a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # make the data durable before the rename publishes it
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what a plain open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """`open(path, mode)` that publishes the file only on a clean exit (`atomic_path`); text is UTF-8."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj) -> None:
    """A JSON file inside an `atomic_dir` (which fsyncs and publishes it; every caller writes there, so no
    temp file of its own); a JSON file on its own goes through `atomic_write_text`."""
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: invalid JSON ({e})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    # safetensors refuses shared storage (tied weights), so store contiguous clones where needed
    seen, out = set(), {}
    for k, t in tensors.items():
        t = t.detach()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        out[k] = t.clone().contiguous() if ptr in seen or not t.is_contiguous() else t
        seen.add(ptr)
    save_file({k: v.cpu() for k, v in out.items()}, str(path), metadata=metadata or {"format": "pt"})


def write_model_dir(path: str | Path, config: dict, state: dict[str, torch.Tensor], generation: dict,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Atomically write an HF-style model dir: config.json, model.safetensors, generation_config.json
    (its None values left out) and extra_files (name -> text: tokenizer files...)."""
    with atomic_dir(path) as tmp:
        write_json(tmp / "config.json", config)
        save_tensors(tmp / "model.safetensors", state)
        write_json(tmp / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: corrupt or truncated safetensors file ({e})") from None


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], source: str) -> None:
    """Raise UserError naming every missing, unexpected or mis-shaped tensor."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(f"{k} (expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)})"
                    for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"mis-shaped tensors: {', '.join(shapes[:8])}")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`, failing with a named error on any key or shape mismatch."""
    check_state_dict(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)
