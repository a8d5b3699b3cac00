"""`llmlab align results`: the published alignment results recipe (llmlab.align.recipe) as one
verb; its sections are configs/align_results.yaml's."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.errors import UserError


@dataclass
class AlignResultsRun:
    """The published results recipe (llmlab.align.recipe); its sections are configs/align_results.yaml's."""
    model: str = field(default="smollm2", metadata={"help": "smollm2, speedrun (the speedrun's chat model) or a dir"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "training seeds per method"})
    split: str = field(default="test", metadata={"help": "test (report) or dev (choose hyperparameters)"})
    only: list[str] = field(default_factory=lambda: ["rm", "grpo", "ppo", "dpo", "ipo", "kto", "orpo"],
                            metadata={"help": "methods to run"})
    output_dir: str = field(default="runs/align_results", metadata={"help": "results.json and results.md"})
    common: dict = field(default_factory=dict, metadata={"help": "n_train_layers (> 0: frozen trunk), ..."})
    rm: dict = field(default_factory=dict)
    pref_data: dict = field(default_factory=dict)
    grpo: dict = field(default_factory=dict)
    ppo: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    ipo: dict = field(default_factory=dict)
    kto: dict = field(default_factory=dict)
    orpo: dict = field(default_factory=dict)
    raft: dict = field(default_factory=dict, metadata={"help": "RAFT (llmlab.align.raft.RAFTConfig fields + rows, reward)"})
    rrhf: dict = field(default_factory=dict, metadata={"help": "RRHF (PreferenceConfig fields + data: rankings|pairs)"})
    pro: dict = field(default_factory=dict, metadata={"help": "PRO (PreferenceConfig fields + data: rankings|pairs)"})
    coh: dict = field(default_factory=dict, metadata={"help": "Chain of Hindsight (PreferenceConfig fields)"})
    speedrun: dict = field(default_factory=dict, metadata={"help": "overrides applied for model=speedrun"})

    def __post_init__(self):
        from llmlab.align.recipe import METHODS
        if self.split not in ("test", "dev"):
            raise UserError(f"split must be test or dev, got {self.split!r}")
        bad = set(self.only) - set(METHODS)
        if bad:
            raise UserError(f"only: unknown {sorted(bad)} (choose from {', '.join(METHODS)})")


def _merge_section(hp: dict, sec: str, given: dict) -> dict:
    """hp[sec] updated with `given`; a value given as text (key=value) is typed like the one it replaces."""
    from llmlab.align.recipe import apply_overrides

    hp.setdefault(sec, {})
    typed = {k: v for k, v in given.items() if not isinstance(v, str) or k not in hp[sec]}
    hp[sec].update(typed)
    return apply_overrides(hp, [f"{sec}.{k}={v}" for k, v in given.items() if k not in typed])


def run_align_results(cfg: AlignResultsRun) -> int:
    """the published alignment results: every method x seed from the SFT model, held-out eval

    Example: llmlab align results configs/align_results.yaml model=smollm2 seeds=[0]

    Sections missing from the config come from configs/align_results.yaml (in a source checkout);
    for model=speedrun the `speedrun` section's overrides apply last.
    """
    from llmlab.align.recipe import OPTIONAL_SECTIONS, RECIPE, SECTIONS, load_hp, results, results_table, write_results
    from llmlab.config import load_yaml
    from llmlab.device import setup_threads

    setup_threads()
    hp = load_hp(RECIPE) if RECIPE.is_file() else {}
    for sec in SECTIONS:
        if not getattr(cfg, sec) and sec not in hp:
            raise UserError(f"section '{sec}' missing: llmlab align results configs/align_results.yaml")
        hp = _merge_section(hp, sec, getattr(cfg, sec))
    for sec in OPTIONAL_SECTIONS:
        if sec in cfg.only and not getattr(cfg, sec) and sec not in hp:
            raise UserError(f"section '{sec}' missing: llmlab align results configs/align_results.yaml")
        if getattr(cfg, sec) or sec in hp:
            hp = _merge_section(hp, sec, getattr(cfg, sec))
    if cfg.model == "speedrun":
        over = cfg.speedrun or ((load_yaml(RECIPE).get("speedrun") or {}) if RECIPE.is_file() else {})
        for sec, kv in over.items():
            hp = _merge_section(hp, sec, kv)
    res = results(cfg.model, list(cfg.seeds), cfg.split, set(cfg.only), hp, log=lambda m: print(m, flush=True))
    print(results_table(res))
    print(f"wrote {write_results(res, cfg.output_dir)}")
    return 0
