"""CLI verbs: `llmlab reward`, `llmlab dpo`, `llmlab grpo`, `llmlab ppo`, `llmlab cai`.

Each prints one JSON summary line (metrics before/after on held-out data) and writes its model to
output_dir (an HF-style dir; the reward model adds v_head.safetensors) with per-step metrics.jsonl.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field

from llmlab.align.cai import CAIConfig
from llmlab.align.elo import EloRun, run_elo
from llmlab.align.grpo import GRPOConfig
from llmlab.align.ppo import PPOConfig
from llmlab.align.preference_trainer import PreferenceConfig
from llmlab.align.redteam import RedTeamRun, run_redteam
from llmlab.align.results_verb import AlignResultsRun, run_align_results
from llmlab.align.reward_model import RewardConfig
from llmlab.verb import Verb, verb
from llmlab.errors import UserError
from llmlab.log import get_logger

VERBS: dict[str, Verb] = {}


@dataclass
class Common:
    model: str = field(default="smollm2", metadata={"help": "policy: packaged name, .gguf file or HF-style dir"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer source if the model dir has none (default: model)"})
    output_dir: str = field(default="runs/align", metadata={"help": "where the trained model and metrics go"})
    num_rows: int = field(default=256, metadata={"help": "training rows/prompts to build"})
    eval_rows: int = field(default=64, metadata={"help": "held-out rows/prompts (builders: seed + 1000; a .jsonl: "
                                                         "its last rows); no training row shares their prompts"})


@dataclass
class RewardRun(Common, RewardConfig):
    data: str = field(default="arithmetic", metadata={"help": "arithmetic, arithmetic_ranked, idiom, humaneval or a .jsonl"})
    ranking_size: int = field(default=4, metadata={"help": "k for arithmetic_ranked"})


@dataclass
class DPORun(Common, PreferenceConfig):
    ref_model: str = field(default="", metadata={"help": "frozen reference (default: a copy of the policy)"})
    data: str = field(default="arithmetic", metadata={"help": "arithmetic, arithmetic_ranked (rrhf/pro), idiom, humaneval or a .jsonl"})


@dataclass
class GRPORun(Common, GRPOConfig):
    ref_model: str = field(default="", metadata={"help": "frozen reference (default: a copy of the policy)"})
    reward: str = field(default="arithmetic", metadata={
        "help": "a name in llmlab.align.rewards.REWARDS: arithmetic, flexible_arithmetic (used for the held-out "
                "results), strict_arithmetic, exact_match, last_int_match, strict_exact_match or format"})
    step_reward: str = field(default="prefix_match", metadata={
        "help": "supervision=process: per-step verifiable reward (prefix_match: each step right while the "
                "answer so far is a prefix of the correct one; the last step by exact match)"})
    step_end: str = field(default="digits", metadata={
        "help": "supervision=process: what ends a step: digits (each digit token) or newline"})
    chat: bool = field(default=True, metadata={"help": "render prompts with the chat template"})


@dataclass
class PPORun(Common, PPOConfig):
    ref_model: str = field(default="", metadata={"help": "frozen reference (default: a copy of the policy)"})
    reward: str = field(default="arithmetic", metadata={"help": "verifiable reward, or 'model' to use reward_model"})
    reward_model: str = field(default="", metadata={"help": "output_dir of `llmlab reward` (with reward=model)"})
    chat: bool = field(default=True, metadata={"help": "render prompts with the chat template"})


@dataclass
class CAIRun(CAIConfig):
    model: str = field(default="smollm2", metadata={"help": "the model that answers, critiques and revises"})
    prompts: str = field(default="", metadata={"help": ".jsonl of {prompt} rows (default: built-in red-team prompts)"})
    output_dir: str = field(default="runs/cai", metadata={"help": "writes sft.jsonl and preferences.jsonl"})


def _load(ref: str, tokenizer: str = ""):
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer

    return load_model_and_tokenizer(ref, device="cpu", dtype="fp32", tokenizer=tokenizer)


_PROBE = "Tokenizer probe: 12 + 30 = 42. 成语 <|im_end|>"


def _ref(policy, tok, ref_ref: str, tok_ref: str):
    """The frozen reference: a copy of the policy, or a model that must share the policy's tokenizer."""
    if not ref_ref:
        return copy.deepcopy(policy).eval()
    ref, ref_tok = _load(ref_ref, tok_ref)
    if ref_tok.encode(_PROBE) != tok.encode(_PROBE) or ref.config.vocab_size != policy.config.vocab_size:
        raise UserError(f"config key 'ref_model': {ref_ref} tokenizes differently from the policy "
                        f"(vocab {ref.config.vocab_size} vs {policy.config.vocab_size}, or different ids for the "
                        "same text): policy and reference must share one tokenizer")
    return ref


def _setup(out: str):
    from llmlab.device import setup_threads
    from llmlab.log import MetricsWriter
    from pathlib import Path

    setup_threads()
    Path(out).mkdir(parents=True, exist_ok=True)
    return MetricsWriter(Path(out) / "metrics.jsonl")


def _save(model, out: str, name: str = "model", extra: dict | None = None):
    from pathlib import Path

    from llmlab.model.hf import save_hf_dir
    path = save_hf_dir(model, Path(out) / name)
    if extra:
        (path / "align.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return path


def _split_rows(source: str, n_train: int, n_held: int, seed: int, k: int = 4) -> tuple[list[dict], list[dict]]:
    """Training and held-out preference rows that share no prompt: builders draw the held-out rows
    with seed + 1000 and training rows with a held-out prompt are dropped; a .jsonl file keeps its
    last n_held rows for evaluation."""
    from llmlab.align.preference_data import build_rows
    if source.endswith(".jsonl"):
        rows = build_rows(source, 0, seed, k)
        if len(rows) <= n_held:
            raise UserError(f"config key 'data': {source} has {len(rows)} rows, not more than eval_rows={n_held}")
        held = rows[-n_held:]
        pool = rows[:-n_held]
    else:
        held = build_rows(source, n_held, seed + 1000, k)
        pool = build_rows(source, n_train + n_held, seed, k)
    seen = {r["prompt"] for r in held}
    train = [r for r in pool if r["prompt"] not in seen][:n_train]
    if not train:
        raise UserError(f"config key 'data': no training rows left after removing held-out prompts from {source}")
    return train, held


def _prompt_rows_split(n_train: int, n_held: int, seed: int, tok, chat: bool) -> tuple[list[dict], list[dict]]:
    """Training and held-out arithmetic prompts (seed and seed + 1000), no question in both."""
    held = _prompt_rows(n_held, seed + 1000, tok, chat)
    seen = {r["prompt"] for r in held}
    train = [r for r in _prompt_rows(n_train + n_held, seed, tok, chat) if r["prompt"] not in seen][:n_train]
    return train, held


def _prompt_rows(n: int, seed: int, tok, chat: bool) -> list[dict]:
    from llmlab.align.preference_data import arithmetic_pairs
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in arithmetic_pairs(n, seed)]
    if chat:
        for r in rows:
            r["prompt"] = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
    return rows


@verb(VERBS, "reward", RewardRun)
def run_reward(cfg: RewardRun) -> int:
    """train a reward model (Bradley-Terry or Plackett-Luce) and report held-out pairwise accuracy

    Example: llmlab reward configs/align_reward.yaml
    """
    from llmlab.align.reward_model import RewardModel, pairwise_accuracy, train_reward_model
    from llmlab.checkpoint import save_tensors

    train, held = _split_rows(cfg.data, cfg.num_rows, cfg.eval_rows, cfg.seed, cfg.ranking_size)  # a bad file: no output_dir
    metrics = _setup(cfg.output_dir)
    backbone, tok = _load(cfg.model, cfg.tokenizer)
    rm = RewardModel(backbone)
    before = pairwise_accuracy(rm, tok, held, cfg.max_length, cfg.chat)
    logs = train_reward_model(rm, tok, train, cfg, metrics)
    after = pairwise_accuracy(rm, tok, held, cfg.max_length, cfg.chat)
    path = _save(rm.backbone, cfg.output_dir, "model", {"source": cfg.model, "tokenizer": cfg.tokenizer or cfg.model})
    save_tensors(path / "v_head.safetensors", {k: v for k, v in rm.v_head.state_dict().items()})
    print(json.dumps({"verb": "reward", "heldout_pairwise_accuracy_before": before,
                      "heldout_pairwise_accuracy_after": after, "steps": len(logs), "output": str(path)}))
    return 0


def load_reward_model(path: str, tokenizer: str = ""):
    """Load `llmlab reward`'s output dir (HF dir + v_head.safetensors) -> (RewardModel, tokenizer)."""
    from pathlib import Path

    from llmlab.align.reward_model import RewardModel
    from llmlab.checkpoint import load_tensors, read_json

    p = Path(path)
    meta = read_json(p / "align.json") if (p / "align.json").is_file() else {}
    backbone, tok = _load(str(p), tokenizer or meta.get("tokenizer", ""))
    rm = RewardModel(backbone)
    rm.v_head.load_state_dict(load_tensors(p / "v_head.safetensors"))
    return rm.eval(), tok


@verb(VERBS, "dpo", DPORun)
def run_dpo(cfg: DPORun) -> int:
    """offline preference training: DPO, IPO, KTO, ORPO, RRHF, PRO or CoH (loss_type=...)

    Example: llmlab dpo configs/align_dpo.yaml loss_type=ipo
    """
    from llmlab.align.preference_data import BUILTIN
    from llmlab.align.preference_trainer import NO_REFERENCE, PreferenceTrainer
    from llmlab.align.ranking_trainer import RANKING, RankingTrainer, heldout_accuracy

    if cfg.data not in BUILTIN and not cfg.data.endswith(".jsonl"):
        raise UserError(f"config key 'data': {cfg.data!r} is neither a .jsonl file nor one of {', '.join(BUILTIN)}")
    train, held = _split_rows(cfg.data, cfg.num_rows, cfg.eval_rows, cfg.seed)  # a bad file: no output_dir
    metrics = _setup(cfg.output_dir)
    policy, tok = _load(cfg.model, cfg.tokenizer)
    ref = _ref(policy, tok, cfg.ref_model, cfg.tokenizer) if cfg.loss_type not in NO_REFERENCE else None
    if not cfg.chat and any(r.get("chat") for r in train + held):  # TRL applies the template to such data too
        get_logger("llmlab.align").info(f"{cfg.data}: conversational rows, prompts rendered with the chat template (chat=true)")
        cfg.chat = True
    base = copy.deepcopy(policy).eval()
    before = heldout_accuracy(policy, tok, held, cfg)
    trainer = RankingTrainer if cfg.loss_type in RANKING else PreferenceTrainer
    logs = trainer(policy, ref, tok, train, cfg, metrics).train()
    after = heldout_accuracy(policy, tok, held, cfg)
    implicit = heldout_accuracy(policy, tok, held, cfg, ref=base) if cfg.loss_type != "coh" else None
    path = _save(policy, cfg.output_dir, "model", {"source": cfg.model, "tokenizer": cfg.tokenizer or cfg.model,
                                                   "config": asdict(cfg)})
    print(json.dumps({"verb": cfg.loss_type, "heldout_logprob_accuracy_before": before,
                      "heldout_logprob_accuracy_after": after, "heldout_implicit_reward_accuracy": implicit,
                      "steps": len(logs), "output": str(path)}))
    return 0


def _reward_fn(name: str):
    from llmlab.align.rewards import REWARDS
    if name not in REWARDS:
        raise UserError(f"config key 'reward': {name!r} is not one of {', '.join(REWARDS)}")
    return REWARDS[name]


@verb(VERBS, "grpo", GRPORun)
def run_grpo(cfg: GRPORun) -> int:
    """GRPO with verifiable arithmetic rewards and a k3 KL to the reference

    Example: llmlab grpo configs/align_grpo.yaml
    """
    from llmlab.align.grpo import GRPOTrainer, mean_reward
    from llmlab.align.rewards import exact_match_reward

    from llmlab.align.rewards import STEP_ENDS, STEP_REWARDS, step_end_token_ids

    reward_fn = _reward_fn(cfg.reward)  # check the config before loading anything
    if cfg.supervision == "process":
        if cfg.step_reward not in STEP_REWARDS:
            raise UserError(f"config key 'step_reward': {cfg.step_reward!r} is not one of {', '.join(STEP_REWARDS)}")
        if cfg.step_end not in STEP_ENDS:
            raise UserError(f"config key 'step_end': {cfg.step_end!r} is not one of {', '.join(STEP_ENDS)}")
    metrics = _setup(cfg.output_dir)
    policy, tok = _load(cfg.model, cfg.tokenizer)
    ref = _ref(policy, tok, cfg.ref_model, cfg.tokenizer)
    process = {}
    if cfg.supervision == "process":
        ends = step_end_token_ids(tok, cfg.step_end)
        if not ends:
            raise UserError(f"config key 'step_end': the tokenizer has no {cfg.step_end} tokens")
        process = {"step_reward_fn": STEP_REWARDS[cfg.step_reward], "step_end_ids": ends}
    train, held = _prompt_rows_split(cfg.num_rows, cfg.eval_rows, cfg.seed, tok, cfg.chat)
    em = lambda m: mean_reward(m, tok, held, exact_match_reward, 1, cfg.max_completion_length, 0.0)  # noqa: E731
    before = em(policy)
    logs = GRPOTrainer(policy, ref, tok, train, reward_fn, cfg, metrics=metrics, **process).train()
    after = em(policy)
    path = _save(policy, cfg.output_dir, "model", {"source": cfg.model, "tokenizer": cfg.tokenizer or cfg.model})
    print(json.dumps({"verb": "grpo", "supervision": cfg.supervision, "heldout_exact_match_before": before,
                      "heldout_exact_match_after": after, "steps": len(logs), "output": str(path)}))
    return 0


@verb(VERBS, "ppo", PPORun)
def run_ppo(cfg: PPORun) -> int:
    """PPO-RLHF: policy, critic, frozen reference, reward model or verifiable reward

    Example: llmlab ppo configs/align_ppo.yaml
    """
    from llmlab.align.grpo import mean_reward
    from llmlab.align.ppo import PPOTrainer, reward_model_score_fn, verifiable_score_fn
    from llmlab.align.reward_model import RewardModel, RewardScorer
    from llmlab.align.rewards import exact_match_reward

    if cfg.reward == "model" and not cfg.reward_model:
        raise UserError("reward=model needs reward_model=<output dir of `llmlab reward`>/model")
    if cfg.reward != "model":
        _reward_fn(cfg.reward)
    metrics = _setup(cfg.output_dir)
    policy, tok = _load(cfg.model, cfg.tokenizer)
    ref = _ref(policy, tok, cfg.ref_model, cfg.tokenizer)
    if cfg.reward == "model":
        rm, _ = load_reward_model(cfg.reward_model, cfg.tokenizer)
        if rm.config.vocab_size != policy.config.vocab_size:
            raise UserError(f"config key 'reward_model': vocab {rm.config.vocab_size} differs from the policy's "
                            f"{policy.config.vocab_size}")
        score = reward_model_score_fn(RewardScorer(rm, tok, chat=False))
        critic = RewardModel(copy.deepcopy(rm.backbone))
        critic.v_head.load_state_dict(rm.v_head.state_dict())
    else:
        score = verifiable_score_fn(_reward_fn(cfg.reward))
        critic = RewardModel(copy.deepcopy(policy))
    train, held = _prompt_rows_split(cfg.num_rows, cfg.eval_rows, cfg.seed, tok, cfg.chat)
    em = lambda m: mean_reward(m, tok, held, exact_match_reward, 1, cfg.max_completion_length, 0.0)  # noqa: E731
    before = em(policy)
    logs = PPOTrainer(policy, ref, critic, tok, train, score, cfg, metrics=metrics).train()
    after = em(policy)
    path = _save(policy, cfg.output_dir, "model", {"source": cfg.model, "tokenizer": cfg.tokenizer or cfg.model})
    print(json.dumps({"verb": "ppo", "heldout_exact_match_before": before, "heldout_exact_match_after": after,
                      "steps": len(logs), "output": str(path)}))
    return 0


@verb(VERBS, "cai", CAIRun)
def run_cai(cfg: CAIRun) -> int:
    """Constitutional AI: critique -> revision SFT data and AI preference labels

    Example: llmlab cai configs/align_cai.yaml
    """
    from pathlib import Path

    from llmlab.align.cai import DEFAULT_PROMPTS, LocalLLM, ai_preferences, critique_revise
    from llmlab.align.preference_data import write_jsonl
    from llmlab.data.packages import read_jsonl

    _setup(cfg.output_dir)
    model, tok = _load(cfg.model)
    llm = LocalLLM(model, tok, cfg.max_new_tokens, cfg.temperature, cfg.seed)
    prompts = [r["prompt"] for r in read_jsonl(cfg.prompts)] if cfg.prompts else list(DEFAULT_PROMPTS)
    sft = critique_revise(llm, prompts, cfg)
    prefs = ai_preferences(llm, prompts, cfg)
    write_jsonl(Path(cfg.output_dir) / "sft.jsonl", sft)
    write_jsonl(Path(cfg.output_dir) / "preferences.jsonl", prefs)
    print(json.dumps({"verb": "cai", "sft_rows": len(sft), "preference_rows": len(prefs), "output": cfg.output_dir}))
    return 0


verb(VERBS, "align results", AlignResultsRun)(run_align_results)
verb(VERBS, "align elo", EloRun)(run_elo)
verb(VERBS, "align redteam", RedTeamRun)(run_redteam)
