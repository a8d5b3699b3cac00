"""Preference data from the model's own samples, ranked by a verifiable reward (RLAIF without a judge).

For each prompt, sample k completions, score each with a graded verifiable reward, and keep one
completion per distinct score, best first. Ties carry no preference, so a prompt whose samples all
score the same yields no row. k > 2 distinct scores give Plackett-Luce rankings, exactly two a pair.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from llmlab.align.encode import pad_id_of
from llmlab.align.rewards import extract_answer, format_reward
from llmlab.align.rollout import sample


def graded_arithmetic_reward(row: dict, completion: str) -> float:
    """Exact answer 1; otherwise closer is better: 1/(2 + |x - answer|) (< 1/2); no number: 0.
    A well-formatted completion gets +0.01, which only breaks ties."""
    got = extract_answer(completion)
    if got is None:
        base = 0.0
    else:
        d = abs(int(got) - int(row["answer"]))
        base = 1.0 if d == 0 else 1.0 / (2 + d)
    return base + 0.01 * format_reward(row, completion)


@torch.no_grad()
def sampled_rankings(model, tok, rows: list[dict], k: int = 4, reward_fn: Callable[[dict, str], float] =
                     graded_arithmetic_reward, max_new_tokens: int = 16, temperature: float = 1.0,
                     seed: int = 0) -> list[dict]:
    """rows: {"prompt", "answer", ...}; the prompt text is encoded as is (render chat templates first).
    Returns {"prompt", "completions" (best first), "rewards"} rows, or pairs when only two levels exist."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ids = [tok.encode(r["prompt"]) for r in rows for _ in range(k)]
    ro = sample(model, ids, max_new_tokens, tok.eos_id, pad_id_of(tok), temperature, 1.0, gen)
    eos = tok.eos_id
    texts = [tok.decode([t for t in c if t != eos]).strip() for c in ro.completions()]
    out = []
    for i, row in enumerate(rows):
        best: dict[float, str] = {}
        for text in texts[i * k:(i + 1) * k]:
            if not text:
                continue
            r = float(reward_fn(row, text))
            if math.isfinite(r) and r not in best:
                best[r] = text
        if len(best) < 2 or len(set(best.values())) < len(best):
            continue
        order = sorted(best, reverse=True)
        comps = [best[r] for r in order]
        if len(comps) == 2:
            out.append({"prompt": row["prompt"], "chosen": comps[0], "rejected": comps[1], "rewards": order})
        else:
            out.append({"prompt": row["prompt"], "completions": comps, "rewards": order})
    return out


def graded_strict_reward(row: dict, completion: str) -> float:
    """`graded_arithmetic_reward` for answers that must be a bare integer: a bare integer scores 1 if
    right, else 1/(2 + distance); anything else (a sentence, an echo of the question) scores 0."""
    from llmlab.align.rewards import _BARE_INT
    m = _BARE_INT.fullmatch(completion)
    if m is None:
        return 0.0
    d = abs(int(m.group(1)) - int(row["answer"]))
    return 1.0 if d == 0 else 1.0 / (2 + d)


def _sample_texts(model, tok, rows: list[dict], samples: int, max_new_tokens: int, temperature: float,
                  seed: int, chat: bool) -> list[str]:
    """`samples` seeded completions per row's prompt, decoded (EOS dropped, stripped), row-major."""
    from llmlab.align.encode import encode_prompt
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ids = [encode_prompt(tok, r["prompt"], chat) for r in rows for _ in range(samples)]
    ro = sample(model, ids, max_new_tokens, tok.eos_id, pad_id_of(tok), temperature, 1.0, gen)
    return [tok.decode([t for t in c if t != tok.eos_id]).strip() for c in ro.completions()]


@torch.no_grad()
def gold_vs_samples(model, tok, rows: list[dict], samples: int = 2, max_new_tokens: int = 8,
                    temperature: float = 1.0, seed: int = 0, chat: bool = True,
                    check: Callable[[dict, str], float] | None = None,
                    grade: Callable[[dict, str], float] = graded_strict_reward) -> tuple[list[dict], list[dict]]:
    """On-policy verifiable preference data for arithmetic rows {"prompt" (raw question), "answer",
    "rejected" (a near miss)}: sample `samples` completions per prompt from `model` (the SFT model).

    Returns (pairs, rankings). A pair is the gold answer (chosen) against the first sample the exact-
    match checker marks wrong (rejected), or against the near miss when every sample is right. A
    ranking orders the gold answer, the near miss and the samples by `grade`
    (best first, one completion per distinct reward). `check` (default: strict exact match) decides
    right/wrong, `grade` the ranking. Prompts are encoded with `chat`; rows keep them as given."""
    from llmlab.align.rewards import strict_exact_match_reward
    check = check or strict_exact_match_reward

    texts = _sample_texts(model, tok, rows, samples, max_new_tokens, temperature, seed, chat)
    pairs, rankings = [], []
    for i, row in enumerate(rows):
        outs = texts[i * samples:(i + 1) * samples]
        wrong = [t for t in outs if t and not check(row, t)]
        gold = str(row["answer"])
        pairs.append({"prompt": row["prompt"], "chosen": gold, "rejected": wrong[0] if wrong else row["rejected"],
                      "answer": gold})
        best: dict[float, str] = {}
        for text in [gold, row["rejected"]] + [t for t in outs if t]:  # right samples too, graded below gold
            r = grade(row, text)
            if r not in best and text not in best.values():
                best[r] = text
        order = sorted(best, reverse=True)
        rankings.append({"prompt": row["prompt"], "completions": [best[r] for r in order], "answer": gold})
    return pairs, rankings


def graded_answer_reward(row: dict, completion: str) -> float:
    """`graded_strict_reward` for answers read with flexible extraction (the reply's last integer,
    `last_int_match_reward`): right 1 (+0.01 when also the bare number, which only breaks ties),
    otherwise 1/(2 + distance) (< 1/2); no integer at all: 0."""
    from llmlab.align.rewards import strict_exact_match_reward
    from llmlab.eval.answers import last_integer
    got = last_integer(completion)
    if got is None:
        return 0.0
    d = abs(got - int(row["answer"]))
    return (1.0 + 0.01 * strict_exact_match_reward(row, completion)) if d == 0 else 1.0 / (2 + d)


@torch.no_grad()
def on_policy_pairs(model, tok, rows: list[dict], samples: int = 8, max_new_tokens: int = 8,
                    temperature: float = 1.0, seed: int = 0, chat: bool = True,
                    check: Callable[[dict, str], float] | None = None,
                    gold_fallback: bool = False) -> tuple[list[dict], dict]:
    """Preference pairs made only of the model's own samples, ranked by a verifiable checker
    (on-policy pairs, as in RLHF pipelines that rank k samples of the SFT model by a reward).

    For each row {"prompt", "answer"}: sample `samples` completions from `model` at `temperature`;
    chosen = the first non-empty sample `check` marks right, rejected = the first it marks wrong.
    A prompt with no wrong sample carries no preference and is skipped; one with no right sample is
    skipped too, unless `gold_fallback`, which then pairs the gold answer (chosen) with the wrong
    sample. `check` defaults to `last_int_match_reward`. Returns (pairs, counts) with counts of
    {"prompts", "on_policy", "gold_fallback", "all_right", "all_wrong_skipped"}."""
    from llmlab.align.rewards import last_int_match_reward
    check = check or last_int_match_reward
    texts = _sample_texts(model, tok, rows, samples, max_new_tokens, temperature, seed, chat)
    pairs = []
    counts = {"prompts": len(rows), "on_policy": 0, "gold_fallback": 0, "all_right": 0, "all_wrong_skipped": 0}
    for i, row in enumerate(rows):
        outs = [t for t in texts[i * samples:(i + 1) * samples] if t]
        right = [t for t in outs if check(row, t)]
        wrong = [t for t in outs if not check(row, t)]
        if not wrong:
            counts["all_right"] += 1
            continue
        if right:
            chosen, kind = right[0], "on_policy"
        elif gold_fallback:
            chosen, kind = str(row["answer"]), "gold_fallback"
        else:
            counts["all_wrong_skipped"] += 1
            continue
        counts[kind] += 1
        pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": wrong[0], "answer": str(row["answer"]),
                      "source": kind})
    return pairs, counts
