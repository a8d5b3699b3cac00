"""The rows of the ablation grid: a registry, one row per variant, grouped by the question it answers.

Each group's first row is the reference (the LLaMA defaults of ModelConfig: pre-norm RMSNorm,
SwiGLU, RoPE, multi-head attention, dense MLP, causal LM); every other row changes one thing.
`model` holds ModelConfig keys, `train` keys of the training config; `needs` names modules that must
be importable for the row to run. Rows whose keys or modules do not exist yet (the objectives and
encoder-decoder work of issue 18 items 1-2) are listed as "needs objectives" and skipped, and run
unchanged once those land: `register(Row(...))` adds or replaces a row by name.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    name: str
    group: str
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    train: dict = field(default_factory=dict)  # training-config overrides (e.g. an objective)
    needs: tuple[str, ...] = ()  # importable modules this row needs
    missing_label: str = ""  # what to say while it cannot run
    note: str = ""

    @property
    def key(self) -> str:
        """Runs with the same settings are one run, whatever group lists them."""
        items = sorted({**self.model, **{f"train.{k}": v for k, v in self.train.items()}}.items())
        return ",".join(f"{k}={v}" for k, v in items) or "reference"


OBJECTIVES = ("llmlab.train.objectives",)
ENCDEC = ("llmlab.model.encoder_decoder",)
ROWS: dict[str, Row] = {}


def register(row: Row) -> Row:
    ROWS[row.name] = row
    return row


for _row in [
    Row("pre-norm", "norm placement"),
    Row("post-norm", "norm placement", {"norm_placement": "post"}),
    Row("sandwich", "norm placement", {"norm_placement": "sandwich"}),
    Row("RMSNorm", "norm"),
    Row("LayerNorm", "norm", {"norm": "layernorm"}),
    Row("SwiGLU", "mlp"),
    Row("GeGLU", "mlp", {"mlp": "geglu"}),
    Row("GeLU", "mlp", {"mlp": "gelu"}, note="2 matrices of 4d vs the GLUs' 3 of 8d/3: equal params"),
    Row("ReLU", "mlp", {"mlp": "relu"}),
    Row("RoPE", "position"),
    Row("ALiBi", "position", {"position": "alibi"}),
    Row("learned", "position", {"position": "learned"}),
    Row("sinusoidal", "position", {"position": "sinusoidal"}),
    Row("MHA", "attention"),
    Row("GQA", "attention", {"num_key_value_heads": 2}),
    Row("MQA", "attention", {"num_key_value_heads": 1}),
    Row("dense", "ffn"),
    Row("MoE 4x top-1", "ffn", {"num_local_experts": 4, "num_experts_per_tok": 1, "router_aux_loss_coef": 0.01},
        note="each expert as wide as the dense MLP: equal active params, 4x total"),
    Row("causal LM", "objective"),
    Row("prefix LM", "objective", train={"objective": "prefix_lm"}, needs=OBJECTIVES, missing_label="needs objectives"),
    Row("UL2", "objective", train={"objective": "ul2"}, needs=OBJECTIVES, missing_label="needs objectives"),
    Row("decoder-only", "architecture"),
    Row("encoder-decoder", "architecture", {"architecture": "encoder_decoder"}, train={"objective": "span_corruption"},
        needs=ENCDEC + OBJECTIVES, missing_label="needs objectives"),
]:
    register(_row)


def missing(row: Row, train_config_cls) -> str:
    """'' when the row can run here, else why not (its label, or the unknown keys)."""
    from llmlab.model.config import ModelConfig
    mods = [m for m in row.needs if importlib.util.find_spec(m) is None]
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(train_config_cls)}
    unknown = [k for k in row.model if k not in model_keys] + [k for k in row.train if k not in train_keys]
    if not mods and not unknown:
        return ""
    return row.missing_label or f"unknown {', '.join(mods + unknown)}"


def select(names: list[str], groups: list[str]) -> list[Row]:
    """Rows by name and/or group (both empty: all), in registry order."""
    from llmlab.errors import UserError
    bad = [n for n in names if n not in ROWS] + [g for g in groups if g not in {r.group for r in ROWS.values()}]
    if bad:
        raise UserError(f"unknown ablation rows/groups {bad}; rows: {', '.join(ROWS)}; "
                        f"groups: {', '.join(dict.fromkeys(r.group for r in ROWS.values()))}")
    return [r for r in ROWS.values() if (not names and not groups) or r.name in names or r.group in groups]
