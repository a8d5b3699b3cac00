"""Where training metrics go: metrics.jsonl (always the source of truth), TensorBoard, loss.png."""
from __future__ import annotations

import json
from pathlib import Path

from llmlab.log import MetricsWriter

METRICS = "metrics.jsonl"


def read_metrics(output_dir: str | Path) -> list[dict]:
    from llmlab.data.packages import read_log
    return read_log(Path(output_dir) / METRICS)


def truncate_metrics(output_dir: str | Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint: they are about to be redone."""
    p = Path(output_dir) / METRICS
    if p.is_file():
        keep = [r for r in read_metrics(output_dir) if r.get("step", 0) <= step]
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")


class Reporter:
    """Rank 0 only. `log(kind, step, **values)` writes JSONL and TensorBoard scalars."""

    def __init__(self, output_dir: str | Path, report_to: list[str], start_step: int = 0):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.dir, start_step)
        self.jsonl = MetricsWriter(self.dir / METRICS)
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=start_step or None)
        self.png = "png" in report_to

    def log(self, kind: str, step: int, **values) -> None:
        self.jsonl.write(kind=kind, step=step, **values)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.png:
            plot_loss(self.dir)


def plot_loss(output_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """Train/val loss (and val bits-per-byte when known) against step, from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train" and "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("kind") == "eval" and "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in recs if r.get("kind") == "eval" and r.get("val_bpb") is not None]
    if not train and not val:
        return None
    fig, axes = plt.subplots(1, 2 if bpb else 1, figsize=(11 if bpb else 6, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if bpb:
        ax2 = axes[0][1]
        ax2.plot(*zip(*bpb), "o-", color="C2", ms=3)
        ax2.set_xlabel("step")
        ax2.set_ylabel("val bits per byte")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path) if path else Path(output_dir) / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
