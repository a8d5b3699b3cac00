"""CLI verb: `llmlab speedrun`."""
from __future__ import annotations

from llmlab.verb import Verb
from llmlab.speedrun.pipeline import SpeedrunConfig


def run_speedrun(cfg: SpeedrunConfig) -> int:
    from llmlab.speedrun.pipeline import run

    summary = run(cfg)
    out = f"{cfg.runs_dir}/{cfg.name}"
    pt = summary["stages"]["pretrain"]
    bpb = f"{pt['val_bpb']:.3f}" if pt.get("val_bpb") is not None else "n/a"
    print(f"\nspeedrun done: report {out}/report.md, validation bits-per-byte {bpb}")
    print(f"chat with it:  llmlab chat model={summary['model_dir']}")
    return 0


VERBS = {
    "speedrun": Verb(SpeedrunConfig, run_speedrun,
                     "real text -> tokenizer -> small pretrained model -> report, on a laptop CPU",
                     "llmlab speedrun name=my-run   (or: llmlab speedrun quick=true)"),
}
