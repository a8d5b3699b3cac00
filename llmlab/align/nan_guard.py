"""Never a silent NaN in the weights: check every update and roll back a bad one.

Before the optimizer step: a non-finite loss or gradient norm skips the step (grads are zeroed).
After it: if any parameter became non-finite (e.g. an overflow inside the optimizer), parameters
and optimizer state are restored from the last good snapshot. The snapshot is a set of
preallocated buffers refreshed in place (one fused copy) every `snapshot_every` good steps, so the
guard costs a few memory copies per step, not a deepcopy. Each check is one reduction and one sync.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from llmlab.log import get_logger


class NanGuard:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = 1.0,
                 snapshot_every: int = 1, max_consecutive_skips: int = 20):
        self.model, self.optimizer = model, optimizer
        self.max_grad_norm = max_grad_norm
        self.snapshot_every = snapshot_every
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = self.rolled_back = self.good_steps = self._streak = 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.log = get_logger()
        self._snap: list[torch.Tensor] | None = None
        self._snap_n_params = 0
        self._snapshot()

    def _tensors(self) -> list[torch.Tensor]:
        """Parameters, then every tensor of their optimizer state in a fixed order."""
        out = [p.data for p in self.params]
        for p in self.params:
            st = self.optimizer.state.get(p, {})
            out += [st[k] for k in sorted(st) if torch.is_tensor(st[k])]
        return out

    def _snapshot(self) -> None:
        ts = self._tensors()
        if self._snap is None or len(self._snap) != len(ts) or any(a.shape != b.shape for a, b in zip(self._snap, ts)):
            self._snap = [t.detach().clone() for t in ts]  # optimizer state appeared (first step): reallocate
        else:
            torch._foreach_copy_(self._snap, ts)
        self._snap_opt_keys = {id(p): set(self.optimizer.state.get(p, {})) for p in self.params}

    def _restore(self) -> None:
        ts = self._tensors()
        if len(ts) == len(self._snap):
            torch._foreach_copy_(ts, self._snap)
        else:  # the snapshot predates the optimizer's state: restore weights, forget the new state
            torch._foreach_copy_(ts[:len(self.params)], self._snap[:len(self.params)])
            self.optimizer.state = defaultdict(dict)

    @staticmethod
    def _finite(ts: list[torch.Tensor]) -> bool:
        if not ts:
            return True
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(ts))).all())

    def _skip(self, why: str) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self._streak += 1
        self.log.warning("nan guard: skipped an update (%s); %d skipped so far", why, self.skipped)
        if self._streak > self.max_consecutive_skips:
            raise FloatingPointError(f"nan guard: {self._streak} consecutive bad updates ({why}); "
                                     "lower the learning rate or check the data")
        return False

    def step(self, loss: torch.Tensor) -> bool:
        """Backward, check, clip, step. Returns True when the update was applied and kept."""
        if not torch.isfinite(loss):
            return self._skip(f"loss is {loss.item()}")
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.max_grad_norm:
            total = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            ok = bool(torch.isfinite(total))
        else:
            ok = self._finite(grads)
        if not ok:
            return self._skip("non-finite gradient")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not self._finite([p.data for p in self.params]):
            self._restore()
            self.rolled_back += 1
            return self._skip("non-finite weights after the step: rolled back")
        self._streak = 0
        self.good_steps += 1
        if self.good_steps % self.snapshot_every == 0:
            self._snapshot()
        return True
