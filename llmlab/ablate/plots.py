"""Figures and tables of the ablation grid and the long-context study (matplotlib, Agg)."""
from __future__ import annotations

import math
from pathlib import Path

LABELS = {"none": "no scaling", "linear": "PI (linear)", "ntk": "NTK-aware", "dynamic": "dynamic NTK", "yarn": "YaRN"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def longctx_heatmaps(rows: list[dict], multiples: list[int], depths: list[float], path: Path) -> None:
    """One passkey heat map (length x depth) per method x fine-tune."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fts = sorted({r["fine_tuned"] for r in rows})
    fig, axes = plt.subplots(len(fts), len(methods), figsize=(2.6 * len(methods), 2.4 * len(fts)), squeeze=False)
    for r in rows:
        ax = axes[fts.index(r["fine_tuned"])][methods.index(r["method"])]
        ax.imshow(r["passkey"], vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for i, row in enumerate(r["passkey"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0%}"[:-1], ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(depths)), [f"{d:.2g}" for d in depths], fontsize=7)
        ax.set_yticks(range(len(multiples)), [f"{m}T" for m in multiples], fontsize=7)
        ax.set_title(f"{LABELS[r['method']]}{' +ft' if r['fine_tuned'] else ''}", fontsize=9)
        ax.set_xlabel("needle depth", fontsize=7)
    fig.suptitle("passkey retrieval (% of keys, greedy), training context T", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def longctx_loss_plot(rows: list[dict], context: int, path: Path, bucket: int = 32) -> None:
    plt = _plt()
    fts = sorted({r["fine_tuned"] for r in rows})
    fig, axes = plt.subplots(1, len(fts), figsize=(6 * len(fts), 3.6), squeeze=False, sharey=True)
    for r in rows:
        ax = axes[0][fts.index(r["fine_tuned"])]
        pos = r["loss_by_position"]
        xs = list(range(0, len(pos), bucket))
        ys = [sum(pos[x:x + bucket]) / len(pos[x:x + bucket]) for x in xs]
        ax.plot([x + bucket / 2 for x in xs], ys, label=LABELS[r["method"]])
    for k, ft in enumerate(fts):
        ax = axes[0][k]
        ax.axvline(context, color="grey", ls=":")
        ax.set_xscale("log", base=2)
        ax.set_ylim(top=min(12, ax.get_ylim()[1]))
        ax.set_xlabel("position (tokens); dotted: training context T")
        ax.set_title("after a short fine-tune at s*T" if ft else "no fine-tune")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"held-out loss (nats, {bucket}-token buckets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def longctx_table(rows: list[dict], multiples: list[int]) -> str:
    head = ["method", "fine-tune"] + [f"passkey {m}T" for m in multiples] + \
        [f"ppl {k}" for k in rows[0]["loss_by_span"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [LABELS[r["method"]], "yes" if r["fine_tuned"] else "no"]
        cells += [f"{a:.0%}" for a in r["passkey_by_length"]]
        cells += [f"{math.exp(min(v, 50)):.1f}" for v in r["loss_by_span"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_plot(summary: list[dict], path: Path) -> None:
    """Held-out bits per byte, mean +- std over seeds, one panel per group."""
    plt = _plt()
    groups = list(dict.fromkeys(s["group"] for s in summary))
    fig, axes = plt.subplots(1, len(groups), figsize=(2.4 * len(groups) + 1, 3.6), squeeze=False, sharey=True)
    for k, g in enumerate(groups):
        ax = axes[0][k]
        rows = [s for s in summary if s["group"] == g]
        xs = range(len(rows))
        ax.bar(xs, [s["bpb_mean"] for s in rows], yerr=[s["bpb_std"] for s in rows], capsize=3,
               color=["tab:blue" if i else "tab:grey" for i in xs])
        ax.set_xticks(list(xs), [s["row"] for s in rows], rotation=40, ha="right", fontsize=8)
        ax.set_title(g, fontsize=9)
    lo = min(s["bpb_mean"] - s["bpb_std"] for s in summary)
    hi = max(s["bpb_mean"] + s["bpb_std"] for s in summary)
    axes[0][0].set_ylim(lo - 0.05 * (hi - lo) - 0.01, hi + 0.05 * (hi - lo) + 0.01)
    axes[0][0].set_ylabel("held-out bits per byte (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
