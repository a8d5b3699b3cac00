"""Low-rank factorisation of Linear layers by truncated SVD (Eckart-Young-Mirsky; for LLMs see
e.g. Hsu et al. 2022, FWSVD, and Yuan et al. 2023, ASVD).

W (out x in) = U S V^T. Keeping the r largest singular values,
  W ~ B A,   A = S_r^(1/2) V_r^T (r x in),   B = U_r S_r^(1/2) (out x r)
is the best rank-r approximation, with error exactly the discarded singular values:
  ||W - BA||_F = sqrt(sum_{i>r} s_i^2),   ||W - BA||_2 = s_{r+1}.
A layer then costs r (in + out) weights and multiply-adds per token instead of in * out, a saving
only when r < in * out / (in + out). The rank is given directly, or as the smallest r keeping a
fraction `energy` of sum s_i^2. No data is used (plain SVD), so the error lands where the weights
are large, not where the activations are: the perplexity figures in docs/compress.md show what that
costs on SmolLM2.
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import UserError


class LowRankLinear(nn.Module):
    """y = B (A x) + b, the two factors of a truncated SVD."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))


def choose_rank(s: torch.Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """s: singular values, descending. rank wins if given; else the smallest r with
    sum_{i<=r} s_i^2 >= energy * sum s_i^2."""
    if rank is not None:
        if rank < 1:
            raise UserError(f"rank must be >= 1, got {rank}")
        return min(rank, s.numel())
    if energy is None or not 0 < energy <= 1:
        raise UserError(f"energy must be in (0, 1], got {energy}")
    cum = (s.double() ** 2).cumsum(0)
    return min(int((cum < energy * cum[-1] * (1 - 1e-12)).sum()) + 1, s.numel())


@torch.no_grad()
def factorize(lin: nn.Linear, rank: int | None = None, energy: float | None = None) -> tuple[LowRankLinear, float]:
    """-> (the factorised layer, ||W - BA||_F / ||W||_F)."""
    w = lin.weight.float()
    U, s, Vh = torch.linalg.svd(w, full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    out = LowRankLinear(lin.in_features, lin.out_features, r, lin.bias is not None).to(lin.weight.device)
    out.A.weight.copy_(root[:, None] * Vh[:r])
    out.B.weight.copy_(U[:, :r] * root[None, :])
    if lin.bias is not None:
        out.B.bias.copy_(lin.bias)
    out.to(lin.weight.dtype)
    rel = float((s[r:].double() ** 2).sum().sqrt() / (s.double() ** 2).sum().sqrt())
    return out, rel


@torch.no_grad()
def factorize_model(model, rank: int | None = None, energy: float | None = None) -> dict[str, dict]:
    """Replace every block Linear (not the LM head) whose factorised form is smaller; -> per layer
    {rank, params before, after, relative Frobenius error}. Layers where r (in + out) >= in * out
    stay dense (listed with rank None)."""
    from llmlab.quant.calibrate import quantizable_linears
    report = {}
    for name, lin in quantizable_linears(model).items():
        new, rel = factorize(lin, rank, energy)
        before, after = lin.in_features * lin.out_features, new.rank * (lin.in_features + lin.out_features)
        if after >= before:
            report[name] = {"rank": None, "before": before, "after": before, "rel_error": 0.0}
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        report[name] = {"rank": new.rank, "before": before, "after": after, "rel_error": rel}
    return report
