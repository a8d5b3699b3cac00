"""`llmlab longctx`: RoPE context extension measured on a model trained at context T.

1. Pretrain a small RoPE model at T on the speedrun corpus mixed with passkey rows (llmlab/ablate/mix.py).
2. For each method (none, linear = position interpolation, ntk, dynamic NTK, yarn; scale factor s)
   rebuild the model with that `rope_scaling` (RoPE tables are a function of the config, so the
   weights load unchanged) and measure, at 1x..8x T:
   (a) passkey retrieval by length x depth (llmlab/eval/passkey.py), and
   (b) next-token loss by position on held-out corpus windows of 8T tokens.
3. Repeat after a short fine-tune of each method at s*T (the papers fine-tune too: PI 1,000 steps,
   YaRN 400 at LLaMA scale; here `ft_steps`).
Everything lands in output_dir: results.jsonl (one line per method x fine-tune, reruns skip what
is done), passkey.png (heat maps), ppl.png (loss by position), table.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmlab.errors import UserError
from llmlab.log import get_logger

METHODS = ("none", "linear", "ntk", "dynamic", "yarn")
log = get_logger("llmlab.longctx")


@dataclass
class LongCtxConfig:
    output_dir: str = field(default="runs/longctx", metadata={"help": "results.jsonl, table.md, *.png, models"})
    corpus_dir: str = field(default="runs/ablate/corpus", metadata={"help": "speedrun corpus cache (shared with ablate)"})
    max_docs: int = 10_000
    vocab_size: int = 2048
    context: int = field(default=128, metadata={"help": "T: the training context"})
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    max_steps: int = field(default=2000, metadata={"help": "pretraining steps at T"})
    batch_size: int = 8
    learning_rate: float = 3e-3
    passkey_fraction: float = field(default=0.5, metadata={"help": "share of each batch that is passkey rows"})
    copy_fraction: float = field(default=0.25, metadata={"help": "share of repeated-text rows (induction signal)"})
    text_filler: float = field(default=0.5, metadata={"help": "share of passkey rows hidden in corpus text "
                                                                      "(the rest in training-only filler sentences)"})
    endpoint_share: float = field(default=0.0, metadata={"help": "share of passkey rows with the needle at "
                                                                   "exactly depth 0 or 1 (pretraining and fine-tune)"})
    endpoint_depth1: float = field(default=0.5, metadata={"help": "share of those endpoint rows at depth 1 "
                                                                   "(the rest at depth 0)"})
    copy_period: str = field(default="half", metadata={"help": "half | random: where repeated rows repeat"})
    passkey_loss: str = field(default="all", metadata={"help": "all | answer: loss on a passkey row's answer only"})
    factor: float = field(default=4.0, metadata={"help": "scale s of every method (fine-tune at s*T)"})
    ft_steps: int = field(default=60, metadata={"help": "fine-tune steps at s*T (0 = no fine-tuned rows)"})
    ft_learning_rate: float = 5e-4
    yarn_attention_factor: float = field(default=0.0, metadata={"help": "YaRN's temperature on cos/sin "
                                                                         "(0: the paper's 0.1 ln s + 1; 1: none)"})
    yarn_beta_fast: float = field(default=32.0, metadata={"help": "YaRN ramp: rotations over T above which "
                                                                   "a frequency is kept"})
    yarn_beta_slow: float = field(default=1.0, metadata={"help": "YaRN ramp: rotations over T below which "
                                                                  "a frequency is interpolated"})
    key_seed: int = field(default=1000, metadata={"help": "evaluation keys' seed offset (1000: the test keys "
                                                           "of every table; another value for validation)"})
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    multiples: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"help": "eval lengths / T"})
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    per_cell: int = field(default=5, metadata={"help": "passkeys per (length, depth) cell"})
    ppl_windows: int = field(default=8, metadata={"help": "held-out windows of max(multiples)*T for loss by position"})
    quick: bool = field(default=False, metadata={"help": "tiny model, few steps (smoke test, minutes)"})
    seed: int = 0

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise UserError(f"methods: unknown {bad} (use {', '.join(METHODS)})")
        if self.factor < 1:
            raise UserError(f"factor must be >= 1, got {self.factor}")
        if self.context < 16 or not self.multiples or min(self.multiples) < 1:
            raise UserError("context must be >= 16 and multiples >= 1")
        if self.quick:
            self.max_docs, self.context, self.hidden_size, self.num_hidden_layers = 300, 128, 64, 2
            self.max_steps, self.ft_steps, self.per_cell, self.ppl_windows = 30, 5, 2, 2
            self.depths, self.multiples = [0.0, 1.0], [1, 2]


def scaled_config(base, method: str, factor: float, context: int, max_len: int, yarn: dict | None = None):
    """The base ModelConfig with `method`'s rope_scaling, accepting positions up to max_len
    (yarn: extra rope_scaling keys for method "yarn": attention_factor, beta_fast, beta_slow)."""
    from llmlab.model.config import ModelConfig
    d = base.to_dict()
    d["max_position_embeddings"] = max_len
    rs = None
    if method != "none":
        rs = {"rope_type": method, "factor": factor, "original_max_position_embeddings": context}
        if method == "yarn" and yarn:
            rs.update(yarn)
    d["rope_scaling"] = rs
    return ModelConfig(**d)


def rescale(model, method: str, factor: float, context: int, max_len: int, yarn: dict | None = None):
    """The same weights under another RoPE scaling (only non-persistent tables change)."""
    from llmlab.model.transformer import Transformer
    m = Transformer(scaled_config(model.config, method, factor, context, max_len, yarn))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight" or not m.config.tie_word_embeddings}
    m.load_state_dict(state, strict=False)
    m.max_length = max(m.max_length, max_len)  # dynamic's own bound is max_pos * factor; ours is max_len
    return m.eval()


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor) -> torch.Tensor:
    """windows (N, L+1) -> mean next-token loss at each of the L positions (N-average)."""
    logits = model(windows[:, :-1])
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none")
    return nll.mean(0)


def _train(cfg: LongCtxConfig, model, seq_len: int, batch: int, steps: int, lr: float, out: Path, corpus: dict,
           task, seed_offset: int):
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.data.loader import TokenWindowLoader
    from llmlab.train.config import TrainConfig
    from llmlab.train.trainer import train

    text = TokenWindowLoader(corpus["train"], seq_len, batch, seed=cfg.seed + seed_offset)
    loader = PasskeyMixLoader(text, task, seq_len, cfg.passkey_fraction, seed=cfg.seed + seed_offset,
                              copy_fraction=cfg.copy_fraction, text_filler=cfg.text_filler,
                              passkey_loss=cfg.passkey_loss, copy_period=cfg.copy_period,
                              endpoint_share=cfg.endpoint_share, endpoint_depth1=cfg.endpoint_depth1)
    tcfg = TrainConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, max_length=seq_len,
                       learning_rate=lr, warmup_steps=max(1, steps // 20), seed=cfg.seed, device="cpu",
                       report_to=["jsonl"], save_total_limit=1, save_steps=max(50, steps // 5),
                       resume_from_checkpoint="auto", peak_flops=1e12, disable_tqdm=cfg.quick, logging_steps=10,
                       spike_guard="off")
    return train(tcfg, model, loader)


def _load_or_train(cfg, out: Path, name: str, build, **kw):
    from llmlab.model.hf import load_hf_dir
    done = out / name / "model"
    if (done / "config.json").exists():
        return load_hf_dir(done)
    model = build()
    _train(cfg, model, out=out / name, **kw)
    return model.eval()


def yarn_options(cfg: LongCtxConfig) -> dict:
    """rope_scaling keys that differ from YaRN's defaults (none at the defaults: the same config as before)."""
    opts = {}
    if cfg.yarn_attention_factor:
        opts["attention_factor"] = cfg.yarn_attention_factor
    if (cfg.yarn_beta_fast, cfg.yarn_beta_slow) != (32.0, 1.0):
        opts.update(beta_fast=cfg.yarn_beta_fast, beta_slow=cfg.yarn_beta_slow)
    return opts


def evaluate(model, cfg: LongCtxConfig, task, val_windows: torch.Tensor) -> dict:
    from llmlab.eval.passkey import accuracy_grid
    lengths = [m * cfg.context for m in cfg.multiples]
    grid = accuracy_grid(model, task, lengths, cfg.depths, cfg.per_cell, seed=cfg.seed + cfg.key_seed, batch_size=4)
    pos = loss_by_position(model, val_windows)
    T = cfg.context
    spans = {f"{a}-{b}T": float(pos[a * T:b * T].mean()) for a, b in zip([0] + cfg.multiples[:-1], cfg.multiples)
             if b * T <= pos.numel()}
    return {"passkey": grid, "passkey_by_length": [sum(r) / len(r) for r in grid], "loss_by_span": spans,
            "loss_by_position": [round(float(v), 4) for v in pos]}


def run(cfg: LongCtxConfig) -> list[dict]:
    from llmlab.ablate.corpus import prepare_corpus
    from llmlab.data.shards import open_shards
    from llmlab.eval.passkey import PasskeyTask
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import load_tokenizer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(cfg.corpus_dir + ("-quick" if cfg.quick else ""), cfg.max_docs, cfg.vocab_size,
                            progress=not cfg.quick)
    tok = load_tokenizer(corpus["tokenizer"])
    task = PasskeyTask(tok, keys="held_out")  # evaluation: keys and filler never trained on
    train_task = PasskeyTask(tok, keys="train")  # training rows: the other keys, TRAIN_FILLERS / corpus filler
    T = cfg.context
    max_len = max(max(cfg.multiples) * T, int(cfg.factor * T))  # positions any model here must take
    val = torch.cat([torch.from_numpy(s.tokens.astype("int64")) for s in open_shards(corpus["val"])])
    n_win = min(cfg.ppl_windows, (val.numel() - 1) // (max_len + 1))
    if n_win < 1:
        raise UserError(f"held-out split has {val.numel()} tokens, fewer than one {max_len}-token window")
    val_windows = val[: n_win * (max_len + 1)].view(n_win, max_len + 1)[:, : max(cfg.multiples) * T + 1]
    base_cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden_size,
                           num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                           max_position_embeddings=T, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)

    def fresh():
        torch.manual_seed(cfg.seed)
        return Transformer(base_cfg)
    base = _load_or_train(cfg, out, "base", fresh, seq_len=T, batch=cfg.batch_size, steps=cfg.max_steps,
                          lr=cfg.learning_rate, corpus=corpus, task=train_task, seed_offset=0)
    results_path = out / "results.jsonl"
    done = {(r["method"], r["fine_tuned"]): r for r in _read_jsonl(results_path)}
    ft_len = int(cfg.factor * T)
    ft_batch = max(1, cfg.batch_size * T // ft_len)  # the same tokens per step as pretraining
    for method in cfg.methods:
        for ft in ([False, True] if cfg.ft_steps else [False]):
            if (method, ft) in done:
                continue
            model = rescale(base, method, cfg.factor, T, max_len, yarn_options(cfg))
            if ft:
                model = _load_or_train(cfg, out, f"ft-{method}", lambda: model.train(), seq_len=ft_len,
                                       batch=ft_batch, steps=cfg.ft_steps, lr=cfg.ft_learning_rate, corpus=corpus,
                                       task=train_task, seed_offset=1)
                model = rescale(model, method, cfg.factor, T, max_len, yarn_options(cfg))
            res = {"method": method, "fine_tuned": ft, **evaluate(model, cfg, task, val_windows),
                   "config": {k: v for k, v in asdict(cfg).items() if k not in ("methods", "quick")}}
            with open(results_path, "a") as f:
                f.write(json.dumps(res) + "\n")
            done[(method, ft)] = res
            log.info(f"{method:8s} ft={ft!s:5s} passkey by length {[round(a, 2) for a in res['passkey_by_length']]}"
                     f" loss {res['loss_by_span']}")
    rows = [done[k] for k in sorted(done, key=lambda k: (METHODS.index(k[0]), k[1])) if k[0] in cfg.methods]
    from llmlab.ablate.plots import longctx_heatmaps, longctx_loss_plot, longctx_table
    longctx_heatmaps(rows, cfg.multiples, cfg.depths, out / "passkey.png")
    longctx_loss_plot(rows, T, out / "ppl.png")
    (out / "table.md").write_text(longctx_table(rows, cfg.multiples))
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    from llmlab.ablate.grid import read_results  # one reader of a results file cut by a kill
    return read_results(path)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))

