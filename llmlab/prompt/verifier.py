"""Trained verifiers that rerank N sampled solutions: an outcome verifier (ORM, Cobbe et al. 2021,
"Training Verifiers to Solve Math Word Problems") and a process verifier (PRM, Lightman et al. 2023,
"Let's Verify Step by Step"; Uesato et al. 2022).

Both are logistic-regression heads on the frozen language model's last hidden state (after the final
norm), trained on sampled solutions of *training* problems:
  ORM  feature = the state at the solution's last token, label = the final answer is right;
       score(s) = P(correct | s).
  PRM  feature = the state at the end of each step (a sentence or line), label = the step and every
       step before it are right (the first error makes the rest wrong, as PRM800K labels);
       score(s) = prod_i P(step i right | steps <= i), the probability that no step is wrong.
Step labels come from a checker, not people: a step is wrong when one of its "a op b = c"
equations is false, or when it states an answer ("the answer is N") other than the gold one.
Reranking: the answer of the top-scored sample (best-of-N); `weighted_vote` sums the scores per
answer (Li et al. 2023, DIVERSE). The head: L2-regularised logistic regression, full batch L-BFGS,
the objective of scikit-learn's LogisticRegression(C) (tested equal).
"""
from __future__ import annotations

import re
from collections import defaultdict
from fractions import Fraction

import torch

_EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_STATED = re.compile(r"answer is\s*:?\s*\$?(-?\d+)", re.I)
_STEP_END = re.compile(r"(?<=[.!?])\s+|\n+")


def steps(solution: str) -> list[tuple[int, str]]:
    """(end offset, text) of each step: sentences and lines of the solution, non-empty."""
    out, start = [], 0
    for m in list(_STEP_END.finditer(solution)) + [None]:
        end = m.start() if m else len(solution)
        if solution[start:end].strip():
            out.append((end, solution[start:end]))
        start = m.end() if m else end
    return out


def _equation_ok(a: str, op: str, b: str, c: str) -> bool:
    x, y, z = Fraction(a), Fraction(b), Fraction(c)
    if op in "x×*":
        return x * y == z
    if op == "/":
        return y != 0 and x / y == z
    return (x + y if op == "+" else x - y) == z


def step_labels(solution: str, gold: str) -> list[int]:
    """1 per step while every step so far is right, 0 from the first wrong step on."""
    labels, ok = [], True
    for _, text in steps(solution):
        ok = ok and all(_equation_ok(*m.groups()) for m in _EQ.finditer(text))
        stated = _STATED.search(text)
        ok = ok and (stated is None or stated.group(1) == gold)
        labels.append(int(ok))
    return labels


@torch.no_grad()
def solution_states(model, tok, prompt: str, solutions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per solution: (last-token state (d,), step-end states (n_steps, d)), hidden states after the
    final norm, from one right-padded forward pass of all prompt + solution sequences (causal: padding
    after a sequence never reaches it). A step's state is at the last token ending at or before the
    step's end (tokens are mapped to characters by decoding prefixes)."""
    p_ids = tok.encode(prompt, allow_special=False)
    sols = [tok.encode(s, allow_special=False) or tok.encode(" ", allow_special=False) for s in solutions]
    T = len(p_ids) + max(len(x) for x in sols)
    batch = torch.zeros(len(sols), T, dtype=torch.long)
    for r, x in enumerate(sols):
        batch[r, :len(p_ids) + len(x)] = torch.tensor(p_ids + x)
    H = model(batch, return_hidden=True).float()
    out = []
    for r, (sol, s_ids) in enumerate(zip(solutions, sols)):
        h = H[r, len(p_ids):len(p_ids) + len(s_ids)]
        ends = [len(tok.decode(s_ids[:i + 1])) for i in range(len(s_ids))]  # char offset after token i
        rows = [h[max([i for i, e in enumerate(ends) if e <= end] or [0])] for end, _ in steps(sol)]
        out.append((h[-1], torch.stack(rows) if rows else h[-1:]))
    return out


class LogisticHead:
    """P(y=1 | x) = sigmoid(w . (x - mu) / sd + b), minimising C * sum BCE + |w|^2 / 2 (scikit-learn's
    LogisticRegression objective, intercept unpenalised) on standardised features, by Newton's method
    with backtracking (the objective is convex; a few steps reach machine precision)."""

    def __init__(self, C: float = 1.0, max_iter: int = 50):
        self.C, self.max_iter = C, max_iter

    def _objective(self, Z, y, theta):
        z = Z @ theta
        return self.C * (torch.nn.functional.softplus(z) - y * z).sum() + 0.5 * (theta[:-1] ** 2).sum()

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> "LogisticHead":
        X, y = X.double(), y.double()
        self.mu, self.sd = X.mean(0), X.std(0, unbiased=False).clamp(min=1e-6)
        Z = torch.cat([(X - self.mu) / self.sd, torch.ones(len(X), 1, dtype=torch.float64)], 1)
        theta = torch.zeros(Z.shape[1], dtype=torch.float64)
        reg = torch.ones_like(theta)
        reg[-1] = 0.0  # the intercept is not penalised
        f = self._objective(Z, y, theta)
        for _ in range(self.max_iter):
            p = torch.sigmoid(Z @ theta)
            grad = self.C * Z.T @ (p - y) + reg * theta
            hess = self.C * (Z.T * (p * (1 - p))) @ Z + torch.diag(reg) + 1e-12 * torch.eye(len(theta), dtype=Z.dtype)
            step, t = torch.linalg.solve(hess, grad), 1.0
            while t > 1e-8:
                new = theta - t * step
                f_new = self._objective(Z, y, new)
                if f_new <= f:
                    break
                t /= 2
            done = float(f - f_new) <= 1e-12 * max(1.0, abs(float(f)))
            theta, f = new, f_new
            if done:
                break
        self.w, self.b = theta[:-1], theta[-1]
        return self

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((X.double() - self.mu) / self.sd) @ self.w + self.b)


def orm_score(head: LogisticHead, states) -> list[float]:
    return head.predict_proba(torch.stack([last for last, _ in states])).tolist()


def prm_score(head: LogisticHead, states) -> list[float]:
    return [float(head.predict_proba(st).prod()) for _, st in states]


def best_of_n(answers: list[str], scores: list[float]) -> str:
    """The answer of the highest-scored sample (ties: the earliest)."""
    return answers[max(range(len(answers)), key=lambda i: (scores[i], -i))] if answers else ""


def weighted_vote(answers: list[str], scores: list[float]) -> str:
    """The answer with the largest summed score over the samples that give it (empty answers skipped)."""
    total: dict[str, float] = defaultdict(float)
    for a, s in zip(answers, scores):
        if a:
            total[a] += s
    return max(total, key=lambda a: (total[a], -answers.index(a))) if total else ""


def sample_solutions(model, tok, prompt: str, n: int, temperature: float = 0.7, max_new_tokens: int = 48,
                     seed: int = 0) -> list[str]:
    """n sampled one-line solutions of one prompt, decoded together (llmlab.infer.generate.generate_batch),
    each ending at its first newline."""
    from llmlab.infer.generate import generate_batch
    from llmlab.infer.sampling import SamplingParams
    ids = tok.encode(prompt, allow_special=False)
    batch = generate_batch(model, [ids] * n, SamplingParams(max_new_tokens, temperature),
                           generator=torch.Generator().manual_seed(seed), pad_id=0,
                           stop_ids=[tok.eos_id] if getattr(tok, "eos_id", None) is not None else (),
                           stop_when=lambda row, gen: "\n" in tok.decode(gen[-1:]))
    return [t.split("\n")[0] for t in batch.texts(tok)]
