"""RAFT, RRHF, PRO and Chain of Hindsight in the published results recipe (recipe.py), trained from
the same SFT model and evaluated on the same held-out questions as GRPO/PPO/DPO:
    llmlab align results configs/align_results.yaml only=[raft,rrhf,pro,coh]

- raft: `RAFTTrainer` with a verifiable reward on the recipe's training questions.
- rrhf / pro: data=rankings (default): the SFT model's own samples per training question, one per
  distinct graded reward, best first (`sampled_rankings` with `graded_answer_reward`: right 1, else
  1/(2 + |last integer - answer|)); data=pairs: DPO's on-policy pairs (a ranking of two).
- coh: DPO's on-policy pairs as hindsight sequences; evaluated with "A good answer:" after the
  prompt (`coh_prompts`).
"""
from __future__ import annotations

MORE_METHODS = ("raft", "rrhf", "pro", "coh")


def train_more(S, method: str, s: int, policy, pref_data: dict, out: dict, pairs_fn) -> tuple[list, list, list]:
    """Train `policy` with one of MORE_METHODS -> (logs, seconds per step, curve)."""
    from llmlab.align.preference_trainer import PreferenceConfig
    from llmlab.align.ranking_trainer import RankingTrainer

    h = dict(S.hp[method])
    if method == "raft":
        from llmlab.align.raft import RAFTConfig, RAFTTrainer
        from llmlab.align.rewards import REWARDS
        rows = S.train_rows(h.pop("rows"), s)
        reward_fn = REWARDS[h.pop("reward")]
        logs = RAFTTrainer(policy, S.tok, rows, reward_fn, RAFTConfig(**h, seed=s)).train()
        return logs, [x["time_sample"] + x["time_sft"] for x in logs], [x["best_of_k_reward"] for x in logs]
    data = h.pop("data", "pairs")
    if data == "rankings":
        key = f"rankings{s}"
        if key not in pref_data:
            pref_data[key] = sampled_rankings_for(S, s, out)
        rows = pref_data[key]
    else:
        if s not in pref_data:
            pref_data[s] = pairs_fn(S, s, out)
        rows = pref_data[s]
    cfg = PreferenceConfig(loss_type=method, chat=False, max_length=128, seed=s, **h)
    logs = RankingTrainer(policy, None, S.tok, rows, cfg).train()
    return logs, [x["step_time"] for x in logs], [x["loss"] for x in logs]


def sampled_rankings_for(S, s: int, out: dict) -> list[dict]:
    from llmlab.align.sampled_rankings import graded_answer_reward, sampled_rankings

    d = S.hp["pref_data"]
    rows = S.train_rows(d["rows"], 200 + s)  # the same questions as the on-policy pairs of this seed
    ranks = sampled_rankings(S.sft, S.tok, rows, d["samples"], graded_answer_reward, S.T, d["temperature"], seed=s)
    sizes = [len(r.get("completions", [0, 0])) for r in ranks]
    out.setdefault("rankings", {})[s] = {"prompts": len(rows), "rankings": len(ranks),
                                         "mean_size": sum(sizes) / max(1, len(sizes))}
    S.log(f"[{S.name}] rankings, seed {s}: {len(ranks)} of {len(rows)} prompts, mean size "
          f"{out['rankings'][s]['mean_size']:.2f}")
    return ranks


def coh_prompts(S) -> list[list[int]]:
    """The held-out prompts followed by CoH's positive feedback phrase."""
    from llmlab.align.ranking_trainer import GOOD
    tail = S.tok.encode(GOOD + " ")
    return [p + tail for p in S.P]
