"""Emergence plot: a task's exact match against model size, beside a smooth metric of the same
answers (mean log-likelihood per gold-answer token), over whatever models are given.

Wei et al. 2022 ("Emergent abilities") plot exact match against scale and see a jump; Schaeffer
et al. 2023 ("Are emergent abilities a mirage?") show that a per-token metric of the same outputs
often rises smoothly: the jump is in the all-or-nothing metric. Both panels are drawn so that the
reader sees which of the two our models show.

    python -m llmlab.eval.emergence out.png task=arithmetic limit=30 MODEL [MODEL ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def measure(model_name: str, task_name: str, limit: int, seed: int = 1234) -> dict:
    import torch

    from llmlab.eval.harness import EvalContext
    from llmlab.eval.tasks import get_task
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_name, "cpu", "auto")
    model.eval()
    task = get_task(task_name)
    items = task.items(limit, seed)
    ctx = EvalContext(model, tok)
    with torch.inference_mode():
        em = task.evaluate(ctx, items)["exact_match"]
        ll = ctx.loglik([(it["prompt"], " " + it["answer"]) for it in items])
    per_tok = sum(r.logprob for r in ll) / max(1, sum(r.tokens for r in ll))
    return {"model": model_name, "params": sum(p.numel() for p in model.parameters()), "task": task_name,
            "n": len(items), "exact_match": em, "answer_logprob_per_token": per_tok}


def plot(points: list[dict], path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = sorted(points, key=lambda p: p["params"])
    x = [p["params"] for p in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(x, [p["exact_match"] for p in pts], "o-")
    a.set(xscale="log", xlabel="parameters", ylabel="exact match", title=f"{pts[0]['task']}: exact match")
    b.plot(x, [p["answer_logprob_per_token"] for p in pts], "o-", color="C1")
    b.set(xscale="log", xlabel="parameters", ylabel="log p per answer token", title="same answers, smooth metric")
    for p in pts:
        a.annotate(Path(p["model"]).name or p["model"], (p["params"], p["exact_match"]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    models = [a for a in argv[1:] if "=" not in a]
    if not argv or not models:
        print(__doc__)
        return 2
    pts = [measure(m, opts.get("task", "arithmetic"), int(opts.get("limit", 30))) for m in models]
    plot(pts, argv[0])
    Path(argv[0]).with_suffix(".json").write_text(json.dumps(pts, indent=1))
    for p in pts:
        print(json.dumps(p))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
