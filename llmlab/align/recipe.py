"""The published alignment results recipe (docs/align.md), runnable as `llmlab align results
configs/align_results.yaml`: each method (reward model, GRPO, PPO, DPO, IPO, KTO, ORPO) trained from
the SFT model for each seed, evaluated on held-out arithmetic prompts (accuracy by the reply's last
integer, strict match, win rates against the SFT model by the checker and by the reward model, KL
to the SFT model along the greedy answers, implicit-reward preference accuracy).

With `common.n_train_layers` > 0 every model trains only its top blocks over one frozen trunk
(`llmlab.align.frozen_trunk`): policies, references, reward models and critics share one memoised
forward of the frozen lower blocks. Hyperparameters are the YAML's; `benchmarks/align.py --results`
runs the same recipe beside its step-time comparison.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import torch

from llmlab.config import load_yaml
from llmlab.errors import UserError

PREF_METHODS = ("dpo", "ipo", "kto", "orpo")
MORE_METHODS = ("raft", "rrhf", "pro", "coh")  # recipe_more.py
METHODS = ("rm", "grpo", "ppo", *PREF_METHODS, *MORE_METHODS)
SECTIONS = ("common", "rm", "pref_data", "grpo", "ppo", *PREF_METHODS)
OPTIONAL_SECTIONS = MORE_METHODS  # only needed when the method runs
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "align_results.yaml"


def load_hp(path: str | Path = RECIPE, model_name: str = "smollm2", sets: list[str] = ()) -> dict:
    """The recipe's hyperparameter sections, with the `speedrun` overrides for model=speedrun and
    `section.key=value` overrides (typed like the value they replace)."""
    data = load_yaml(path)
    hp = {k: dict(data[k]) for k in (*SECTIONS, *OPTIONAL_SECTIONS) if k in data}
    missing = [k for k in SECTIONS if k not in hp]
    if missing:
        raise UserError(f"{path}: the recipe lacks section(s) {', '.join(missing)}")
    if model_name == "speedrun":
        for sec, kv in (data.get("speedrun") or {}).items():
            hp.setdefault(sec, {}).update(kv)
    return apply_overrides(hp, sets)


def apply_overrides(hp: dict, sets) -> dict:
    hp = copy.deepcopy(hp)
    for kv in sets:
        key, _, val = kv.partition("=")
        sec, _, name = key.partition(".")
        if sec not in hp or name not in hp[sec]:
            raise UserError(f"override {kv}: unknown key (sections: {', '.join(hp)})")
        old = hp[sec][name]
        hp[sec][name] = type(old)(val) if not isinstance(old, bool) else str(val).lower() in ("1", "true", "yes")
    return hp


def speedrun_chat_model(hp: dict, log=print) -> str:
    """The speedrun's chat-tuned model: runs/speedrun/sft/model if the speedrun made one, else a short
    `llmlab sft` of runs/speedrun/train/model on training-split arithmetic questions (never a dev or
    test question), written once to runs/align_speedrun_sft/model."""
    from pathlib import Path

    from llmlab.align.evaluate import arithmetic_splits, arithmetic_train
    for cand in ("runs/speedrun/sft/model", "runs/align_speedrun_sft/model"):
        if (Path(cand) / "config.json").is_file():
            return cand
    base = Path("runs/speedrun/train/model")
    if not (base / "config.json").is_file():
        raise FileNotFoundError("no speedrun model: run `make speedrun` (runs/speedrun/train/model) first")
    from llmlab.finetune.sft import run_sft
    from llmlab.finetune.sft_config import SftConfig
    c, h = hp["common"], hp["sft"]
    test, dev = arithmetic_splits(c["n_eval"], c["n_eval"], max_operand=c["max_operand"])
    rows = arithmetic_train(h["rows"], 300, test + dev, c["max_operand"])
    out = Path("runs/align_speedrun_sft")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "arithmetic_sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "system", "content": ""},
                                                     {"role": "user", "content": r["prompt"]},
                                                     {"role": "assistant", "content": r["answer"]}]}) + "\n"
                            for r in rows))
    log(f"[speedrun] no chat model yet: SFT of {base} on {len(rows)} training questions -> {out}/model")
    run_sft(SftConfig(model=str(base), datasets=[str(data)], num_train_epochs=h["epochs"], learning_rate=h["learning_rate"],
                      per_device_train_batch_size=16, max_length=128, output_dir=str(out), save_strategy="no",
                      eval_max_examples=0, disable_tqdm=True, report_to=["jsonl"]))
    return str(out / "model")


def load_policy_model(name: str, hp: dict, log=print):
    """'smollm2' (the packaged SmolLM2-135M-Instruct), 'speedrun' (the speedrun's chat model) or a dir."""

    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    if name == "speedrun":
        name = speedrun_chat_model(hp, log)
    model, tok = load_model_and_tokenizer(name, device="cpu", dtype="fp32")
    return model.float().eval(), tok, name


class _Setup:
    """What every method's run shares: the frozen SFT model, how to fork a trainable copy, the
    held-out prompts and the SFT model's own answers and scores on them."""

    def __init__(self, model_name: str, split: str, hp: dict, log):
        from llmlab.align.evaluate import arithmetic_splits, decode, encode_prompts, pair_logprobs
        from llmlab.align.frozen_trunk import fork, share_frozen_trunk
        from llmlab.align.sampled_rankings import gold_vs_samples, graded_answer_reward
        from llmlab.align.rewards import last_int_match_reward

        c = hp["common"]
        self.hp, self.log, self.name, self.split = hp, log, model_name, split
        self.sft, self.tok, self.resolved = load_policy_model(model_name, hp, log)
        self.trunk = share_frozen_trunk([self.sft], c["n_train_layers"]) if c["n_train_layers"] else None
        self._fork = fork if self.trunk is not None else None
        for p in self.sft.parameters():
            p.requires_grad_(False)
        test, dev = arithmetic_splits(c["n_eval"], c["n_eval"], max_operand=c["max_operand"])
        self.exclude = test + dev
        self.held = self.render(test if split == "test" else dev)
        self.P, self.T = encode_prompts(self.tok, self.held, chat=False), c["max_new_tokens"]
        self.check = {"check": last_int_match_reward, "grade": graded_answer_reward}  # for the RM's rankings
        self.sft_g = decode(self.sft, self.tok, self.P, self.T)
        self.sft_ok = self.correct(self.sft_g)
        # held-out preference data: gold answer vs near miss vs the SFT model's own wrong samples
        self.held_pairs, self.held_rank = gold_vs_samples(self.sft, self.tok, self.held, 2, self.T, seed=999,
                                                          chat=False, **self.check)
        self.sft_pair_lp = pair_logprobs(self.sft, self.tok, self.held_pairs, 128)
        self.judge, self.sft_rm = None, None

    def fork(self, m):
        """A trainable copy: the top blocks over the shared trunk, or (full training) a plain copy."""
        if self._fork is not None:
            return self._fork(m)
        m = copy.deepcopy(m)
        for p in m.parameters():
            p.requires_grad_(True)
        return m

    def render(self, rows):  # the chat template with an empty system prompt (SmolLM2's default one is 21 tokens)
        return [dict(r, prompt=self.tok.apply_chat_template([{"role": "system", "content": ""},
                                                             {"role": "user", "content": r["prompt"]}])) for r in rows]

    def train_rows(self, n: int, seed: int) -> list[dict]:
        from llmlab.align.evaluate import arithmetic_train
        return self.render(arithmetic_train(n, seed, self.exclude, self.hp["common"]["max_operand"]))

    # the checker: primary = answer correctness, the reply's last integer (lm-eval gsm8k "flexible-
    # extract"); secondary = strict match, the reply is the bare number ("strict-match")
    def correct(self, g) -> list[float]:
        from llmlab.align.rewards import last_int_match_reward
        return [last_int_match_reward(r, t) for r, t in zip(self.held, g["texts"])]

    def strict(self, g) -> list[float]:
        from llmlab.align.rewards import strict_exact_match_reward
        return [strict_exact_match_reward(r, t) for r, t in zip(self.held, g["texts"])]

    def copies(self, g) -> float:  # a degenerate policy answers with the question's first number ("2 * 3" -> "2")
        return statistics.mean(float(t.strip().rstrip(".") == r["prompt"].split("What is ")[-1].split()[0])
                               for r, t in zip(self.held, g["texts"]))

    def summary(self) -> dict:
        sft, g, c = self.sft, self.sft_g, self.hp["common"]
        return {"model": self.resolved, "split": self.split, "n_eval": len(self.held), "hp": self.hp,
                "trainable": (f"top {c['n_train_layers']} of {sft.config.num_hidden_layers} blocks + final norm"
                              if self.trunk is not None else "all parameters"),
                "sft_accuracy": statistics.mean(self.sft_ok), "sft_strict_match": statistics.mean(self.strict(g)),
                "sft_copies_first_operand": self.copies(g), "sft_answers": g["texts"],
                "sft_samples": g["texts"][:8], "methods": {}, "pref_pairs": {}}


def train_reward_models(S: _Setup, seeds: list[int], out: dict) -> None:
    """One reward model per seed on the SFT model's graded samples; the seed-0 one judges win rates."""
    from llmlab.align.evaluate import mean_std, score_completions
    from llmlab.align.reward_model import RewardConfig, RewardModel, pairwise_accuracy, train_reward_model
    from llmlab.align.sampled_rankings import gold_vs_samples

    r, rm_acc = S.hp["rm"], []
    for s in seeds:
        torch.manual_seed(s)
        _, rank = gold_vs_samples(S.sft, S.tok, S.train_rows(r["rows"], 100 + s), r["samples"], S.T, seed=s,
                                  chat=False, **S.check)
        rm = RewardModel(S.fork(S.sft))
        t0 = time.perf_counter()
        logs = train_reward_model(rm, S.tok, rank, RewardConfig(loss=r["loss"], learning_rate=r["learning_rate"],
                                  num_train_epochs=r["num_train_epochs"], chat=False, max_length=128,
                                  per_device_train_batch_size=r["per_device_train_batch_size"], seed=s))
        dt = (time.perf_counter() - t0) / max(1, len(logs))
        rm_acc.append(pairwise_accuracy(rm, S.tok, S.held_rank, 128, False))
        S.log(f"[{S.name}] rm seed {s}: held-out pairwise accuracy {rm_acc[-1]:.3f} ({len(logs)} steps, "
              f"{dt:.2f} s/step)")
        if S.judge is None:
            S.judge = rm
        out.setdefault("rm_s_per_step", []).append(dt)
    base_acc = pairwise_accuracy(RewardModel(S.fork(S.sft)), S.tok, S.held_rank, 128, False)
    out["rm"] = {"heldout_pairwise_accuracy": mean_std(rm_acc), "untrained_head_accuracy": base_acc,
                 "heldout_pairs": sum(len(x["completions"]) * (len(x["completions"]) - 1) // 2 for x in S.held_rank)}
    S.sft_rm = score_completions(S.judge, S.tok, S.P, S.sft_g["completions"])


def evaluate_policy(S: _Setup, policy, pref: bool, coh: bool = False) -> dict:
    from llmlab.align.evaluate import decode, implicit_reward_accuracy, pair_logprobs, score_completions, win_rate
    from llmlab.align.recipe_more import coh_prompts

    tt = [time.perf_counter()]
    # greedy answers, and KL(pi || pi_sft) along them (CoH: prompted with "A good answer:")
    g = decode(policy, S.tok, coh_prompts(S) if coh else S.P, S.T, ref=S.sft)
    tt.append(time.perf_counter())
    ok = S.correct(g)
    same = [a == b for a, b in zip(g["completions"], S.sft_g["completions"])]
    ev = {"accuracy": statistics.mean(ok), "strict_match": statistics.mean(S.strict(g)),
          "win_checker": win_rate(ok, S.sft_ok, same), "kl": statistics.mean(g["kl"]),
          "sample": g["texts"][:4], "answers": g["texts"], "copies_first_operand": S.copies(g)}
    if S.judge is not None:
        ev["win_rm"] = win_rate(score_completions(S.judge, S.tok, S.P, g["completions"]), S.sft_rm, same)
    tt.append(time.perf_counter())
    if pref:  # the preference methods' own target; skipped for GRPO/PPO to save time
        ev["pref_accuracy"] = implicit_reward_accuracy(pair_logprobs(policy, S.tok, S.held_pairs, 128), S.sft_pair_lp)
    tt.append(time.perf_counter())
    ev["eval_parts_s"] = dict(zip(("greedy+kl", "rm", "pref"), [round(b - a, 1) for a, b in zip(tt, tt[1:])]))
    return ev


def preference_pairs(S: _Setup, s: int, out: dict) -> list[dict]:
    from llmlab.align.sampled_rankings import gold_vs_samples, on_policy_pairs

    d = S.hp["pref_data"]
    rows = S.train_rows(d["rows"], 200 + s)
    if d["source"] == "on_policy":
        pairs, counts = on_policy_pairs(S.sft, S.tok, rows, d["samples"], S.T, d["temperature"], seed=s, chat=False,
                                        gold_fallback=d["gold_fallback"])
    elif d["source"] == "gold":
        pairs = gold_vs_samples(S.sft, S.tok, rows, d["samples"], S.T, d["temperature"], seed=s, chat=False,
                                **S.check)[0]
        counts = {"prompts": len(rows), "gold": len(pairs)}
    else:
        raise UserError(f"pref_data.source must be on_policy or gold, got {d['source']!r}")
    out["pref_pairs"][s] = counts
    S.log(f"[{S.name}] preference pairs, seed {s}: {len(pairs)} ({counts}); "
          f"e.g. {[(x['chosen'], x['rejected']) for x in pairs[:3]]}")
    return pairs


def train_method(S: _Setup, method: str, s: int, policy, pref_data: dict, out: dict) -> tuple[list, list, list]:
    """Train `policy` with one method and seed -> (logs, seconds per step, curve)."""
    from llmlab.align.grpo import GRPOConfig, GRPOTrainer
    from llmlab.align.ppo import PPOConfig, PPOTrainer, verifiable_score_fn
    from llmlab.align.preference_trainer import PreferenceConfig, PreferenceTrainer
    from llmlab.align.reward_model import RewardModel
    from llmlab.align.rewards import REWARDS

    if method in ("grpo", "ppo"):
        h = dict(S.hp[method])
        prompts = S.train_rows(h.pop("rows"), s)
        reward_fn = REWARDS[h.pop("reward")]
        if method == "grpo":
            logs = GRPOTrainer(policy, S.sft, S.tok, prompts, reward_fn, GRPOConfig(**h, seed=s)).train()
        else:
            critic = RewardModel(S.fork(S.sft))
            logs = PPOTrainer(policy, S.sft, critic, S.tok, prompts, verifiable_score_fn(reward_fn),
                              PPOConfig(**h, seed=s)).train()
            del critic
        return logs, [x["time_rollout"] + x["time_reward"] + x["time_update"] for x in logs], [x["reward"] for x in logs]
    if method in MORE_METHODS:
        from llmlab.align.recipe_more import train_more
        return train_more(S, method, s, policy, pref_data, out, preference_pairs)
    if s not in pref_data:
        pref_data[s] = preference_pairs(S, s, out)
    cfg = PreferenceConfig(loss_type=method, chat=False, max_length=128, seed=s, **S.hp[method])
    logs = PreferenceTrainer(policy, None if method == "orpo" else S.sft, S.tok, pref_data[s], cfg).train()
    return logs, [x["step_time"] for x in logs], [x["loss"] for x in logs]


def _summarize(runs: list[dict], judged: bool) -> dict:
    from llmlab.align.evaluate import mean_std

    summ = {"runs": runs}
    for k in ("accuracy", "strict_match", "kl", "pref_accuracy", "s_per_step", "copies_first_operand"):
        if k in runs[0]:
            summ[k] = mean_std([r[k] for r in runs])
    summ["seeds"] = [r["seed"] for r in runs]
    summ["win_checker"] = mean_std([r["win_checker"]["win_rate"] for r in runs])
    if judged:
        summ["win_rm"] = mean_std([r["win_rm"]["win_rate"] for r in runs])
    return summ


def results(model_name: str, seeds: list[int], split: str, only: set[str], hp: dict, log=print,
            method_seeds: dict[str, list[int]] | None = None) -> dict:
    """Train each method from the SFT model for each seed; evaluate on held-out (or dev) prompts."""
    t_start = time.perf_counter()
    S = _Setup(model_name, split, hp, log)
    out = S.summary()
    out["seeds"] = seeds
    log(f"[{model_name}] SFT on {split}: accuracy {out['sft_accuracy']:.3f}, strict match "
        f"{out['sft_strict_match']:.3f}; sample answers: {S.sft_g['texts'][:4]}")
    if "rm" in only:
        train_reward_models(S, seeds, out)
    pref_data: dict = {}
    for method in [m for m in ("grpo", "ppo", *PREF_METHODS, *MORE_METHODS) if m in only]:
        runs = []
        for s in (method_seeds or {}).get(method, seeds):
            torch.manual_seed(s)
            policy = S.fork(S.sft)
            t0 = time.perf_counter()
            logs, per_step, curve = train_method(S, method, s, policy, pref_data, out)
            train_s = time.perf_counter() - t0
            ev = evaluate_policy(S, policy, method in PREF_METHODS, coh=method == "coh")
            ev.update(seed=s, steps=len(logs), train_s=train_s, eval_s=time.perf_counter() - t0 - train_s,
                      s_per_step=statistics.median(per_step), curve=[round(v, 4) for v in curve])
            runs.append(ev)
            log(f"[{model_name}] {method} seed {s}: accuracy {out['sft_accuracy']:.3f} -> {ev['accuracy']:.3f}, "
                f"strict {out['sft_strict_match']:.3f} -> {ev['strict_match']:.3f}, "
                f"1st operand {ev['copies_first_operand']:.2f}, win(checker) {ev['win_checker']['win_rate']:.3f}"
                + (f", win(RM) {ev['win_rm']['win_rate']:.3f}" if "win_rm" in ev else "")
                + f", KL {ev['kl']:.3f}" + (f", pref acc {ev['pref_accuracy']:.3f}" if "pref_accuracy" in ev else "")
                + f", {len(logs)} steps in {train_s:.0f} s (eval {ev['eval_s']:.0f} s: {ev['eval_parts_s']});"
                f" {ev['sample']}; curve {[round(v, 2) for v in curve]}")
            del policy
        out["methods"][method] = _summarize(runs, S.judge is not None)
    if S.trunk is not None:
        out["trunk"] = {"hits": S.trunk.hits, "misses": S.trunk.misses, "prefix_hits": S.trunk.prefix_hits}
    out["seconds"] = time.perf_counter() - t_start
    return out


def results_table(res: dict) -> str:
    """Markdown table of one model's results: mean ± std over seeds."""
    f = lambda ms, d=3: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"  # noqa: E731
    lines = [f"SFT answers equal to the first operand: {res['sft_copies_first_operand']:.2f}.\n",
             "| method | accuracy, last integer (SFT -> after) | strict match, bare number (SFT -> after) | "
             "win rate vs SFT, checker | win rate vs SFT, RM | KL to SFT (nats/answer) | "
             "implicit-reward pref. acc. | answer = 1st operand | s/step | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in res["methods"].items():
        lines.append(f"| {m.upper()} | {res['sft_accuracy']:.3f} -> {f(s['accuracy'])} | "
                     f"{res['sft_strict_match']:.3f} -> {f(s['strict_match'])} | {f(s['win_checker'])} | "
                     + (f(s["win_rm"]) if "win_rm" in s else "-") + f" | {f(s['kl'])} | "
                     + (f(s["pref_accuracy"]) if "pref_accuracy" in s else "-")
                     + f" | {f(s['copies_first_operand'], 2)} | {s['s_per_step'][0]:.2f} | {','.join(map(str, s['seeds']))} |")
    if res.get("pref_pairs"):
        lines.append("\nPreference pairs (DPO/IPO/KTO/ORPO training data) per seed: "
                     + "; ".join(f"seed {s}: {sum(v for k, v in c.items() if k in ('on_policy', 'gold_fallback', 'gold'))}"
                                 f" of {c['prompts']} prompts ({', '.join(f'{k} {v}' for k, v in c.items() if k != 'prompts')})"
                                 for s, c in res["pref_pairs"].items()) + ".")
    if "rm" in res:
        a = res["rm"]["heldout_pairwise_accuracy"]
        lines.append(f"\nReward model: held-out pairwise accuracy {a[0]:.3f} ± {a[1]:.3f} over "
                     f"{res['rm']['heldout_pairs']} pairs (untrained head: {res['rm']['untrained_head_accuracy']:.3f}).")
    return "\n".join(lines)


def write_results(res: dict, out_dir: str | Path) -> Path:
    """results.json (everything) and results.md (the table) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_table(res) + "\n", encoding="utf-8")
    return out / "results.md"
