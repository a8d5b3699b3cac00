"""Parallel context windows (PCW; Ratner et al. 2023, "Parallel Context Windows for Large Language
Models"): more in-context examples than the context window holds, with no training.

The context is cut into W windows of at most C tokens. Every window is encoded as if it were alone:
its tokens take positions 0..len-1 (the windows share positions) and attend causally inside their
own window only. The task tokens (the question, then what is generated) follow at positions
N, N+1, ... (N = the longest window's length) and attend to every window token and causally to the
task tokens before them:

    keys ->          w1 w1 | w2 w2 w2 | t t
    w1 tokens        causal |   .      | .
    w2 tokens          .    |  causal  | .
    task tokens      all    |   all    | causal

so the positions never exceed C + len(task) whatever W is, and a window's keys/values equal those of
the window run alone. `pcw_inputs` builds the ids, positions and mask; `pcw_logits` runs any causal
`Transformer` on them (a ready boolean mask and explicit position ids).
"""
from __future__ import annotations

import torch

from llmlab.errors import UserError


def pcw_inputs(windows: list[list[int]], task: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids (1, L), position_ids (L,), keep mask (1, 1, L, L) (True = attend), L = all
    window tokens + task tokens."""
    if not windows or any(len(w) == 0 for w in windows):
        raise UserError("parallel context windows: give at least one window, none of them empty")
    if not task:
        raise UserError("parallel context windows: the task tokens are empty")
    ids = [t for w in windows for t in w] + list(task)
    n_ctx, n = sum(len(w) for w in windows), len(ids)
    window_of = torch.cat([torch.full((len(w),), i) for i, w in enumerate(windows)] + [torch.full((len(task),), -1)])
    start = max(len(w) for w in windows)
    pos = torch.cat([torch.arange(len(w)) for w in windows] + [torch.arange(start, start + len(task))])
    i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    causal = j <= i
    same_window = (window_of.unsqueeze(1) == window_of.unsqueeze(0)) & (window_of.unsqueeze(1) >= 0)
    task_query = (i >= n_ctx)
    keep = causal & (same_window | task_query)  # task queries: every earlier key (all windows, earlier task)
    return torch.tensor([ids]), pos, keep.view(1, 1, n, n)


@torch.no_grad()
def pcw_logits(model, windows: list[list[int]], task: list[int]) -> torch.Tensor:
    """Logits (len(task), V) of the task tokens under parallel context windows."""
    cfg = model.config
    if cfg.position in ("alibi", "t5") or cfg.sliding_window or cfg.prefix_lm:
        raise UserError(f"parallel context windows need a plain causal model with position ids "
                        f"(this one: position={cfg.position}, sliding_window={cfg.sliding_window}, "
                        f"prefix_lm={cfg.prefix_lm})")
    ids, pos, keep = pcw_inputs(windows, task)
    dev = next(model.parameters()).device
    logits = model(ids.to(dev), attention_mask=keep.to(dev), position_ids=pos.to(dev))
    return logits[0, -len(task):]
