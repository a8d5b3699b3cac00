"""Huffman tree for hierarchical softmax (Morin & Bengio 2005; Mikolov et al. 2013).

Built as word2vec.c does, in O(V) from counts sorted in descending order: two queues (leaves
from the rarest, inner nodes in creation order) and at each step the two smallest nodes merge,
an inner node winning ties. The second-smallest child gets bit 1. A word's `points` are the
inner nodes from the root (index V-2) down to its parent, and `codes` the branch taken at each;
the word's probability is prod_j sigmoid((1 - 2 code_j) * u_{point_j} . h), so the V leaf
probabilities sum to one.
"""
from __future__ import annotations

import numpy as np


def huffman_codes(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [V, L], points int32 [V, L], codelens int32 [V]) for counts sorted descending."""
    counts = np.asarray(counts, dtype=np.int64)
    v = len(counts)
    if v < 2:  # one word: no inner node, nothing to predict
        return np.zeros((v, 1), np.uint8), np.zeros((v, 1), np.int32), np.zeros(v, np.int32)
    if np.any(counts[1:] > counts[:-1]):
        raise ValueError("counts must be sorted in descending order")
    count = np.concatenate([counts, np.full(v - 1, np.iinfo(np.int64).max // 4)])
    parent = np.zeros(2 * v - 1, dtype=np.int64)
    binary = np.zeros(2 * v - 1, dtype=np.uint8)
    leaf, inner = v - 1, v
    cnt = count.tolist()
    for a in range(v - 1):
        pair = []
        for _ in range(2):
            if leaf >= 0 and cnt[leaf] < cnt[inner]:
                pair.append(leaf)
                leaf -= 1
            else:
                pair.append(inner)
                inner += 1
        cnt[v + a] = cnt[pair[0]] + cnt[pair[1]]
        parent[pair[0]] = parent[pair[1]] = v + a
        binary[pair[1]] = 1
    root = 2 * v - 2
    depth = np.zeros(2 * v - 1, dtype=np.int64)
    for node in range(root - 1, -1, -1):  # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    codelens = depth[:v].astype(np.int32)
    width = int(codelens.max())
    codes = np.zeros((v, width), dtype=np.uint8)
    points = np.zeros((v, width), dtype=np.int32)
    cur = np.arange(v)
    pos = codelens.astype(np.int64) - 1
    rows = np.arange(v)
    while True:
        live = pos >= 0
        if not live.any():
            break
        r, c, p = rows[live], cur[live], pos[live]
        codes[r, p] = binary[c]
        points[r, p] = parent[c] - v
        cur[live] = parent[c]
        pos[live] -= 1
    return codes, points, codelens
