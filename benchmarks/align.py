"""Alignment trainers' step time, ours vs TRL, on the same tiny LLaMA weights and batches.

  python benchmarks/align.py [--quick]

Both sides train the same randomly initialised LLaMA-architecture model (our Transformer and
transformers' LlamaForCausalLM with identical weights) on the same toy arithmetic data with the same
character vocabulary:
  DPO:  batch of B pairs, reference log-probs precomputed on both sides (TRL precompute_ref_log_probs);
  GRPO: P prompts x G generations, max_completion_length tokens, verifiable reward, beta > 0.
Runs alternate ours / TRL, each timing `steps` optimizer steps; we report the median step time over
all steps after the first of each run. The last stdout line is the JSON summary; ratios are
TRL s/step divided by ours (> 1: ours is faster). Figures taken on a shared CPU are labelled so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# the script's own folder holds other benchmarks (e.g. peft.py) that would shadow real packages
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from llmlab.align.grpo import GRPOConfig, GRPOTrainer  # noqa: E402
from llmlab.align.preference_trainer import PreferenceConfig, PreferenceTrainer, logprob_preference_accuracy  # noqa: E402
from llmlab.align.recipe import RECIPE, load_hp, results, results_table  # noqa: E402
from llmlab.align.rewards import arithmetic_reward  # noqa: E402
from llmlab.align.toy import CharTokenizer, toy_sum_prompts  # noqa: E402
from llmlab.device import setup_threads  # noqa: E402
from llmlab.model import ModelConfig, Transformer  # noqa: E402


def model_config(tok) -> ModelConfig:
    return ModelConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, eos_token_id=tok.eos_id,
                       pad_token_id=tok.pad_id, tie_word_embeddings=True)


def ours_model(cfg, seed=0):
    torch.manual_seed(seed)
    return Transformer(cfg)


def hf_model(cfg, ours):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.model.hf import config_to_hf
    d = config_to_hf(cfg)
    d.pop("architectures", None)
    d.pop("torch_dtype", None)
    d.pop("dtype", None)
    m = LlamaForCausalLM(LlamaConfig(**d))
    missing, unexpected = m.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k or "rotary" in k for k in missing), (missing, unexpected)
    m.generation_config.pad_token_id = cfg.pad_token_id
    m.generation_config.eos_token_id = cfg.eos_token_id
    return m


def hf_tokenizer(tok):
    """A PreTrainedTokenizerFast with exactly CharTokenizer's ids (TRL needs an HF tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(tok.alphabet)}
    vocab["<pad>"], vocab["</s>"] = tok.pad_id, tok.eos_id
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>")


def dpo_rows(n):
    import random
    rng, rows = random.Random(0), []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + rng.choice((-1, 1)))})
    return rows


class StepTimer:
    def __init__(self):
        self.times, self._t = [], None

    def callback(self):
        from transformers import TrainerCallback
        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer._t)
        return CB()


def run_ours_dpo(cfg, tok, rows, B, steps):
    pol, ref = ours_model(cfg), ours_model(cfg)
    tr = PreferenceTrainer(pol, ref, tok, rows, PreferenceConfig(beta=0.1, learning_rate=1e-4,
                           per_device_train_batch_size=B, max_steps=steps))
    return [r["step_time"] for r in tr.train()]


def run_trl_dpo(cfg, tok, rows, B, steps, tmp):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    pol = hf_model(cfg, ours_model(cfg))
    ref = hf_model(cfg, ours_model(cfg))
    timer = StepTimer()
    args = DPOConfig(output_dir=tmp, per_device_train_batch_size=B, max_steps=steps, learning_rate=1e-4, beta=0.1,
                     precompute_ref_log_probs=True, logging_steps=10 ** 6, save_strategy="no", report_to=[],
                     use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, bf16=False,
                     gradient_checkpointing=False)
    tr = DPOTrainer(model=pol, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                    processing_class=hf_tokenizer(tok), callbacks=[timer.callback()])
    tr.train()
    return timer.times


def run_ours_grpo(cfg, tok, P, G, T, steps):
    pol, ref = ours_model(cfg), ours_model(cfg)
    gc = GRPOConfig(num_generations=G, prompts_per_step=P, max_steps=steps, max_completion_length=T,
                    learning_rate=1e-4, beta=0.04, seed=0)
    return [r["time_rollout"] + r["time_reward"] + r["time_update"]
            for r in GRPOTrainer(pol, ref, tok, toy_sum_prompts(P * 2), arithmetic_reward, gc).train()]


def run_trl_grpo(cfg, tok, P, G, T, steps, tmp):
    from datasets import Dataset
    from trl import GRPOConfig as TConfig
    from trl import GRPOTrainer as TTrainer
    # TRL builds GRPO's reference from the model's path, so hand it a saved directory
    path = os.path.join(tmp, "grpo_init")
    hf_model(cfg, ours_model(cfg)).save_pretrained(path)
    prompts = toy_sum_prompts(P * 2)
    answers = {r["prompt"]: r for r in prompts}

    def reward(prompts, completions, **kw):
        return [arithmetic_reward(answers[p], c) for p, c in zip(prompts, completions)]

    timer = StepTimer()
    args = TConfig(output_dir=tmp, per_device_train_batch_size=P * G, num_generations=G, max_completion_length=T,
                   learning_rate=1e-4, beta=0.04, logging_steps=10 ** 6, save_strategy="no", report_to=[],
                   use_cpu=True, max_steps=steps, disable_tqdm=True, bf16=False, temperature=1.0,
                   dataloader_num_workers=0, seed=0, model_init_kwargs={"dtype": torch.float32})
    tr = TTrainer(model=path, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(
        [{"prompt": r["prompt"]} for r in prompts] * 50), processing_class=hf_tokenizer(tok),
        callbacks=[timer.callback()])
    tr.train()
    return timer.times


def toy_results(seeds=(0, 1, 2)) -> dict:
    """Target metrics before/after on the toy task, 3 seeds (model init, sampling and data), mean and std.

    GRPO: expected arithmetic reward (exact match + 0.2 format), 16 samples per prompt, on its 4
    training prompts, 30 steps. DPO: fraction of 64 *held-out* pairs (same 'a+b=' space, fresh wrong
    answers) whose chosen answer gets the higher mean token log-prob; 3 epochs on 32 pairs.
    """
    import random

    from llmlab.align.grpo import mean_reward

    tok = CharTokenizer()
    small = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=32)

    def pairs(n, seed):
        rng, out = random.Random(seed), []
        for _ in range(n):
            a, b = rng.randint(0, 4), rng.randint(0, 4)
            w = rng.choice([x for x in range(10) if x != a + b])
            out.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(w)})
        return out

    out = {k: [] for k in ("grpo_before", "grpo_after", "dpo_before", "dpo_after")}
    for s in seeds:
        pol, ref = ours_model(small, s), ours_model(small, s)
        prompts = toy_sum_prompts(4, seed=s)
        out["grpo_before"].append(mean_reward(pol, tok, prompts, arithmetic_reward, 16, 3))
        GRPOTrainer(pol, ref, tok, prompts, arithmetic_reward,
                    GRPOConfig(num_generations=8, prompts_per_step=4, max_steps=30, max_completion_length=3,
                               learning_rate=3e-2, beta=0.04, seed=s)).train()
        out["grpo_after"].append(mean_reward(pol, tok, prompts, arithmetic_reward, 16, 3))
        pol, ref = ours_model(small, s), ours_model(small, s)
        held = pairs(64, 1000 + s)
        out["dpo_before"].append(logprob_preference_accuracy(pol, tok, held))
        PreferenceTrainer(pol, ref, tok, pairs(32, s), PreferenceConfig(beta=0.5, learning_rate=3e-3, num_train_epochs=3,
                                                                       per_device_train_batch_size=8, seed=s)).train()
        out["dpo_after"].append(logprob_preference_accuracy(pol, tok, held))
    return {f"toy_{k}_mean": statistics.mean(v) for k, v in out.items()} | \
           {f"toy_{k}_std": statistics.stdev(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# --results: issue 8 item 7, held-out results on SmolLM2-135M-Instruct (and the speedrun model)
# ---------------------------------------------------------------------------------------------

# Hyperparameters, chosen on the dev split only (docs/align.md, docs/LOG.md); `--set key=value`
# overrides one (e.g. --set grpo.learning_rate=3e-5) for a dev experiment.
def hp_for(model_name: str, sets: list[str]) -> dict:
    """The results recipe's hyperparameters (configs/align_results.yaml), with --set overrides."""
    return load_hp(RECIPE, model_name, sets)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--results", action="store_true", help="issue 8 item 7: held-out results table(s)")
    ap.add_argument("--models", default="smollm2,speedrun", help="with --results: smollm2, speedrun or a dir")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--split", default="test", choices=("test", "dev"), help="dev: for choosing hyperparameters")
    ap.add_argument("--only", default="rm,grpo,ppo,dpo,ipo,kto,orpo")
    ap.add_argument("--set", action="append", default=[], help="override a hyperparameter: section.key=value")
    ap.add_argument("--no-timing", action="store_true", help="with --results: skip the step-time comparison")
    ap.add_argument("--json-out", default="", help="with --results: also write the full results JSON here")
    ap.add_argument("--method-seeds", action="append", default=[],
                    help="with --results: other seeds for one method, e.g. ppo:0,1 (default: --seeds)")
    a = ap.parse_args()
    threads = setup_threads()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    res_all = {}
    if a.results:
        seeds = [int(x) for x in a.seeds.split(",")]
        for name in a.models.split(","):
            try:
                per = {m: [int(x) for x in v.split(",")] for m, _, v in (ms.partition(":") for ms in a.method_seeds)}
                res_all[name] = results(name, seeds, a.split, set(a.only.split(",")), hp_for(name, a.set),
                                        log=lambda m: print(m, flush=True), method_seeds=per)
            except FileNotFoundError as e:
                res_all[name] = {"pending": str(e)}
                print(f"[{name}] pending: {e}", flush=True)
                continue
            print(f"\n## {name} ({a.split} split, seeds {a.seeds}, "
                  f"{res_all[name]['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})\n", flush=True)
            print(results_table(res_all[name]), flush=True)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(res_all, f, indent=1, default=str)
        if a.no_timing:
            return
    import tempfile

    tok = CharTokenizer()
    cfg = model_config(tok)
    steps, repeats = (4, 1) if a.quick else (8, 1 if a.results else 3)
    repeats = a.repeats or repeats
    B, P, G, T = 8, 2, 4, 4
    rows = dpo_rows(B * steps)
    res = {k: [] for k in ("ours_dpo", "trl_dpo", "ours_grpo", "trl_grpo")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):  # alternate so drifting machine load hits both sides alike
            res["ours_dpo"] += run_ours_dpo(cfg, tok, rows, B, steps)[1:]
            res["trl_dpo"] += run_trl_dpo(cfg, tok, rows, B, steps, tmp)[1:]
            res["ours_grpo"] += run_ours_grpo(cfg, tok, P, G, T, steps)[1:]
            res["trl_grpo"] += run_trl_grpo(cfg, tok, P, G, T, steps, tmp)[1:]
    med = {k: statistics.median(v) for k, v in res.items()}
    toy = {} if (a.quick or a.results) else toy_results()
    load = os.getloadavg()[0]
    note = (f"CPU, {threads} thread(s), 1-min load average {load:.1f} on a shared machine"
            + (" (contended: absolute times inflated)" if load > (os.cpu_count() or 1) else ""))
    setup = {"model": "LLaMA 4x128, vocab 18, tied", "dpo_batch_pairs": B, "grpo_prompts": P, "grpo_G": G,
             "grpo_max_completion_length": T, "steps_per_run": steps, "repeats": repeats, "note": note}
    summary = {}
    for name, r in res_all.items():
        if "methods" not in r:
            summary[name] = r
            continue
        summary[name] = {"sft_accuracy": r["sft_accuracy"], "sft_strict_match": r["sft_strict_match"], "split": r["split"],
                         **({"rm_accuracy": r["rm"]["heldout_pairwise_accuracy"]} if "rm" in r else {}),
                         **{m: {k: v[k] for k in ("accuracy", "strict_match", "win_checker", "win_rm", "kl", "s_per_step")
                                if k in v}
                            for m, v in r["methods"].items()}}
    print(json.dumps({"benchmark": "align",
                      "ours": {"dpo_s_per_step": med["ours_dpo"], "grpo_s_per_step": med["ours_grpo"], **setup, **toy,
                               **({"results": summary} if summary else {})},
                      "peer": {"name": "trl " + __import__("trl").__version__, "dpo_s_per_step": med["trl_dpo"],
                               "grpo_s_per_step": med["trl_grpo"]},
                      "ratio": {"dpo_step_speed": med["trl_dpo"] / med["ours_dpo"],
                                "grpo_step_speed": med["trl_grpo"] / med["ours_grpo"]}}))


if __name__ == "__main__":
    main()
