"""A 2-D PCA picture of a few semantic clusters (PNG): the words' vectors are centred and
projected on their two leading principal directions (SVD), one colour per cluster."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.embed.vectors import WordVectors

CLUSTERS_EN = {
    "countries": ["france", "germany", "italy", "spain", "china", "japan", "russia", "india"],
    "capitals": ["paris", "berlin", "rome", "madrid", "beijing", "tokyo", "moscow", "london"],
    "family": ["father", "mother", "son", "daughter", "brother", "sister", "king", "queen"],
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight"],
    "science": ["physics", "chemistry", "biology", "mathematics", "theory", "energy", "atoms", "molecules"],
}


def pca_2d(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def pca_plot(kv: WordVectors, path: str | Path, clusters: dict[str, list[str]] = CLUSTERS_EN,
             title: str = "word vectors, PCA") -> Path | None:
    """Writes the PNG; words not in the vocabulary are left out. None if fewer than 3 words."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(name, w) for name, ws in clusters.items() for w in ws if w in kv.index]
    if len(items) < 3:
        return None
    xy = pca_2d(np.stack([kv.vectors[kv.index[w]] for _, w in items]).astype(np.float64))
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    names = list(clusters)
    for k, name in enumerate(names):
        idx = [i for i, (n, _) in enumerate(items) if n == name]
        if idx:
            ax.scatter(xy[idx, 0], xy[idx, 1], color=plt.cm.tab10(k % 10), label=name, s=24)
            for i in idx:
                ax.annotate(items[i][1], xy[i], fontsize=8, xytext=(3, 2), textcoords="offset points")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
