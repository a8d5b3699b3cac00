"""CLI verb: `llmlab speedrun`."""
from __future__ import annotations

from llmlab.verb import Verb, verb
from llmlab.speedrun.pipeline import SpeedrunConfig

VERBS: dict[str, Verb] = {}


@verb(VERBS, "speedrun", SpeedrunConfig)
def run_speedrun(cfg: SpeedrunConfig) -> int:
    """real text -> tokenizer -> small pretrained model -> report, on a laptop CPU

    Example: llmlab speedrun name=my-run   (or: llmlab speedrun quick=true)
    """
    from llmlab.speedrun.pipeline import run

    summary = run(cfg)
    out = f"{cfg.runs_dir}/{cfg.name}"
    pt = summary["stages"]["pretrain"]
    bpb = f"{pt['val_bpb']:.3f}" if pt.get("val_bpb") is not None else "n/a"
    print(f"\nspeedrun done: report {out}/report.md, validation bits-per-byte {bpb}")
    print(f"chat with it:  llmlab chat model={summary['model_dir']}")
    return 0
