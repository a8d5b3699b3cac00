"""Auto-CoT: k-means against scikit-learn, one demo per cluster, the paper's heuristics."""
from __future__ import annotations

import numpy as np

from llmlab.prompt.auto_cot import auto_cot_demos, kmeans


def test_kmeans_equals_sklearn_from_the_same_start():
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.5, size=(30, 3)) for c in (0.0, 3.0, 6.0, 9.0)])
    init = x[[0, 40, 70, 100]]
    labels, centers = kmeans(x, 4, init=init)
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=0).fit(x)
    assert np.array_equal(labels, ref.labels_)
    assert np.allclose(centers, ref.cluster_centers_)
    labels2, _ = kmeans(x, 4, seed=1)  # k-means++ seeding finds the 4 blobs
    assert sorted(np.bincount(labels2)) == [30, 30, 30, 30]


class _Enc:
    def encode(self, texts):
        import torch
        # two obvious topics: 'apples' questions vs 'train' questions
        return torch.tensor([[1.0, 0.0] if "apples" in t else [0.0, 1.0] for t in texts])


class _LLM:
    def __init__(self):
        self.prompts = []

    def complete(self, prompt, max_new_tokens=0, stop=()):
        self.prompts.append(prompt)
        if "long" in prompt:
            return "A. B. C. D. E. F. G. The answer is 1."  # 8 steps: rejected
        return "We add the numbers. The answer is 7."


def test_one_demo_per_cluster_with_heuristics():
    qs = ["A long apples question here?", "Ana has 3 apples and gets 4 more apples. How many?",
          "A train goes 3 km then 4 km. How far?", "The train stops twice. How many long stops?"]
    llm = _LLM()
    demos = auto_cot_demos(llm, qs, k=2, encoder=_Enc())
    assert len(demos) == 2 and {d["cluster"] for d in demos} == {0, 1}
    assert all(d["answer"] == "7" and d["rationale"].startswith("Let's think step by step.") for d in demos)
    assert {d["question"] for d in demos} == {qs[1], qs[2]}  # the first apples candidate's rationale was too long
    assert all(p.endswith("Let's think step by step.") for p in llm.prompts)
