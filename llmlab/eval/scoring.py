"""Deterministic per-sample log-likelihoods: log P(continuation | context) under a causal LM.

Why the numbers do not depend on batch size or padding: a float matmul row is bitwise the
same whatever else is in the batch, but NOT whatever the sequence length (left padding with an
attention mask moves results by ~3e-5 nats on SmolLM2, measured). So each request is
right-padded to a length that depends only on itself (its token count rounded up to a multiple
of `bucket`) and batched only with requests of the same padded length. Right padding needs no
mask: causal attention never lets a real position see the pad tokens after it. The LM head is
applied per request to its own continuation positions only, so the shape of every operation
a request goes through is a function of that request alone (tests/test_eval_scoring.py checks
batch 1 vs 16 are bitwise equal). Only a (B, T, hidden) activation and each request's
(n_continuation, vocab) logits ever exist -- never the logits of the whole batch.

Requests whose model input is identical (multiple choice with one-token answers " A", " B",
...) share one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from llmlab.errors import UserError


@dataclass
class LogLik:
    logprob: float  # sum over continuation tokens, nats
    greedy: bool  # every continuation token is the argmax
    tokens: int  # continuation tokens scored
    truncated: bool  # context was cut on the left to fit the window


def encode_pair(tokenizer, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """Split like lm-eval's HFLM: trailing spaces of the context move to the continuation, the
    continuation ids are encode(context + continuation) minus the encode(context) prefix (BPE
    merges across the boundary stay as the model would see them). Empty context -> [prefix_id]."""
    if context == "":
        return [prefix_id], tokenizer.encode(continuation, allow_special=False)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation, allow_special=False)
    ctx = tokenizer.encode(context, allow_special=False)
    return ctx, whole[len(ctx):]


def rolling_windows(tokens: list[int], prefix_id: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint windows covering every token once (lm-eval's get_rolling_token_windows with
    context_len=1 + make_disjoint_window): each window predicts up to max_len tokens and sees as
    much earlier text as fits. The first token is predicted from `prefix_id` (BOS/EOS)."""
    out = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([prefix_id], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        inp = tokens[max(end - max_len - 1, 0):end - 1]
        out.append((inp[:len(inp) - (n - 1)], tokens[end - n:end]))
        done = end
    return out


def _bucket(n: int, bucket: int, max_len: int) -> int:
    return min(-(-n // bucket) * bucket, max_len)


@torch.inference_mode()
def loglikelihoods(model, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 16,
                   bucket: int = 32, max_length: int | None = None, pad_id: int = 0) -> list[LogLik]:
    """Score (context_ids, continuation_ids) pairs; results come back in request order."""
    max_len = max_length or model.config.max_position_embeddings
    device = next(model.parameters()).device
    prepared = []  # (input ids, n continuation tokens, target ids, truncated)
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise UserError(f"request {i}: empty continuation")
        if len(cont) > max_len:
            raise UserError(f"request {i}: continuation of {len(cont)} tokens exceeds the {max_len}-token window")
        full = list(ctx) + list(cont)
        inp = full[:-1][-max_len:]  # left truncation keeps the tokens nearest the continuation
        prepared.append((tuple(inp), len(cont), full[-len(cont):], len(full) - 1 > max_len))

    unique: dict[tuple, list[int]] = {}  # identical inputs share one forward pass
    for i, p in enumerate(prepared):
        unique.setdefault(p[0], []).append(i)
    groups: dict[int, list[tuple]] = {}
    for inp in unique:
        groups.setdefault(_bucket(len(inp), bucket, max_len), []).append(inp)

    results: list[LogLik | None] = [None] * len(requests)
    head = model.lm_head
    for length in sorted(groups):
        inputs = sorted(groups[length])
        for s in range(0, len(inputs), batch_size):
            chunk = inputs[s:s + batch_size]
            ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            for r, inp in enumerate(chunk):
                ids[r, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            hidden = model(ids.to(device), return_hidden=True)
            for r, inp in enumerate(chunk):
                for i in unique[inp]:
                    _, n, target, trunc = prepared[i]
                    h = hidden[r, len(inp) - n:len(inp)]
                    logp = F.log_softmax(head(h).float(), dim=-1)
                    tgt = torch.tensor(target, device=logp.device)
                    lp = logp.gather(-1, tgt[:, None]).squeeze(-1)
                    greedy = bool((logp.argmax(-1) == tgt).all())
                    results[i] = LogLik(float(lp.double().sum()), greedy, n, trunc)
    return results  # type: ignore[return-value]


def rolling_nll(model, docs: Iterable[list[int]], prefix_id: int, max_length: int | None = None,
                batch_size: int = 16, bucket: int = 32) -> list[tuple[float, int]]:
    """Per document: (total NLL in nats of every token, #tokens), each token predicted once."""
    max_len = max_length or model.config.max_position_embeddings
    reqs, owner = [], []
    docs = list(docs)
    for d, toks in enumerate(docs):
        for w in rolling_windows(toks, prefix_id, max_len):
            reqs.append(w)
            owner.append(d)
    out = [[0.0, 0] for _ in docs]
    for o, ll in zip(owner, loglikelihoods(model, reqs, batch_size, bucket, max_len)):
        out[o][0] -= ll.logprob
        out[o][1] += ll.tokens
    return [(a, b) for a, b in out]
