"""Adam, AdamW, Adamax and Adafactor written out, one readable update per parameter.

Adam (Kingma & Ba 2015, Alg. 1), with g_t the gradient at step t:
    m_t = b1 m_{t-1} + (1 - b1) g_t            v_t = b2 v_{t-1} + (1 - b2) g_t^2
    m^_t = m_t / (1 - b1^t)                    v^_t = v_t / (1 - b2^t)      (bias correction)
    theta_t = theta_{t-1} - lr m^_t / (sqrt(v^_t) + eps)
  weight_decay here is L2 regularisation: g_t += wd theta_{t-1} before the moments.
AdamW (Loshchilov & Hutter 2019): decay decoupled from the gradient, theta *= (1 - lr wd) first,
  so a weight with zero gradient still shrinks by exactly (1 - lr wd) per step.
Adamax (Kingma & Ba 2015, sec. 7.1): the L2 norm of v becomes the infinity norm,
    u_t = max(b2 u_{t-1}, |g_t| + eps)         theta_t = theta_{t-1} - lr/(1 - b1^t) m_t / u_t
  (the notes write v_{t-1} for u_{t-1}; torch adds eps inside the max, as here).
Adafactor (Shazeer & Stern 2018, Alg. 4/5): for a matrix the second moment is kept factored as
  row sums R (n) and column sums C (m) of V = g^2 + eps1: V^ = R C^T / sum(R), i.e. n + m numbers
  instead of n m. b2_t = 1 - t^(-0.8) (decay_rate); the update U = g / sqrt(V^) is clipped to RMS
  <= d (clip_threshold); with relative_step the step size is min(1e-2, 1/sqrt(t)) and with
  scale_parameter it is multiplied by max(eps2, RMS(theta)). No first moment unless beta1 is set.
  Defaults follow transformers.optimization.Adafactor, the reference of tests/test_optimizers.py.

All four equal their references (torch.optim.Adam/AdamW/Adamax, HF Adafactor) to <= 1e-6 over
10 steps. They loop over parameters (no fused kernels): the point is that each line is a formula.
"""
from __future__ import annotations

import math

import torch


class _Base(torch.optim.Optimizer):
    def _params(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    yield group, p, self.state[p]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, p, state in self._params():
            self._update(group, p, state)
        return loss


class _AdamFamily(_Base):
    """The hyperparameters Adam, AdamW and Adamax share (lr, betas, eps, weight_decay), checked once."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid {type(self).__name__} hyperparameters lr={lr} betas={betas} eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @staticmethod
    def hyper(group) -> tuple:
        return group["lr"], group["betas"], group["eps"], group["weight_decay"]

    @staticmethod
    def next_step(state: dict, p: torch.Tensor, *moments: str) -> float:
        """Count this step (t, from 1); the named moment buffers start at zero."""
        if not state:
            state["step"] = torch.tensor(0.0)
            for name in moments:
                state[name] = torch.zeros_like(p)
        state["step"] += 1
        return float(state["step"])


class Adam(_AdamFamily):
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, group, p, state):
        lr, (b1, b2), eps, wd = self.hyper(group)
        g = p.grad
        t = self.next_step(state, p, "exp_avg", "exp_avg_sq")
        if wd:
            if self.decoupled:
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bc1)


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


class Adamax(_AdamFamily):
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, group, p, state):
        lr, (b1, b2), eps, wd = self.hyper(group)
        g = p.grad if not wd else p.grad + wd * p
        t = self.next_step(state, p, "exp_avg", "exp_inf")
        m, u = state["exp_avg"], state["exp_inf"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        torch.maximum(u * b2, g.abs() + eps, out=u)
        p.addcdiv_(m, u, value=-lr / (1 - b1 ** t))


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm() / math.sqrt(x.numel())


class Adafactor(_Base):
    def __init__(self, params, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                 weight_decay=0.0, scale_parameter=True, relative_step=True, warmup_init=False):
        if lr is not None and relative_step:
            raise ValueError("Adafactor: give lr with relative_step=False, or relative_step=True without lr")
        if warmup_init and not relative_step:
            raise ValueError("Adafactor: warmup_init needs relative_step=True")
        super().__init__(params, dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, decay_rate=decay_rate,
                                      beta1=beta1, weight_decay=weight_decay, scale_parameter=scale_parameter,
                                      relative_step=relative_step, warmup_init=warmup_init))

    @staticmethod
    def step_size(group, t: float, param_rms: float) -> float:
        """rho_t = min(1e-2 (1e-6 t with warmup_init), 1/sqrt(t)) or the given lr, times max(eps2, RMS)."""
        rho = group["lr"]
        if group["relative_step"]:
            rho = min(1e-6 * t if group["warmup_init"] else 1e-2, 1.0 / math.sqrt(t))
        return rho * (max(group["eps"][1], param_rms) if group["scale_parameter"] else 1.0)

    def _update(self, group, p, state):
        g = p.grad.float()
        factored = g.dim() >= 2
        if not state:
            state["step"] = torch.tensor(0.0)
            if group["beta1"] is not None:
                state["exp_avg"] = torch.zeros_like(g)
            if factored:  # row / column means of V: shape[:-1] and shape[:-2] + shape[-1:]
                state["exp_avg_sq_row"] = g.new_zeros(g.shape[:-1])
                state["exp_avg_sq_col"] = g.new_zeros(g.shape[:-2] + g.shape[-1:])
            else:
                state["exp_avg_sq"] = torch.zeros_like(g)
        state["step"] += 1
        t = float(state["step"])
        theta = p if p.dtype == torch.float32 else p.float()  # fp32 math for bf16/fp16 weights
        lr = self.step_size(group, t, float(_rms(theta)))
        b2t = 1.0 - t ** group["decay_rate"]
        sq = g * g + group["eps"][0]
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(b2t).add_(sq.mean(dim=-1), alpha=1 - b2t)
            col.mul_(b2t).add_(sq.mean(dim=-2), alpha=1 - b2t)
            # V^_ij = R_i C_j / mean(R): the rank-1 reconstruction (means instead of sums, same ratio)
            v_hat = (row / row.mean(dim=-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)
            update = g * v_hat.rsqrt()
        else:
            v = state["exp_avg_sq"]
            v.mul_(b2t).add_(sq, alpha=1 - b2t)
            update = g * v.rsqrt()
        update = update / (_rms(update) / group["clip_threshold"]).clamp(min=1.0) * lr
        if group["beta1"] is not None:
            m = state["exp_avg"]
            m.mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
            update = m
        if group["weight_decay"]:
            theta.add_(theta, alpha=-group["weight_decay"] * lr)
        theta.sub_(update)
        if theta is not p:
            p.copy_(theta)


OPTIMIZERS = {"adamw": AdamW, "adam": Adam, "adamax": Adamax, "adafactor": Adafactor}
