"""GloVe (Pennington, Socher, Manning 2014).

Co-occurrence: X_ij = sum over occurrences of j within `window` words of i (both sides, so X is
symmetric) of 1/distance. Counted in one pass over the id array, `CHUNK_TOKENS` tokens at a
time (vectorised per distance), each chunk summed into a sparse CSR matrix: memory is the
matrix's non-zeros plus one chunk.

Objective: J = 1/2 sum_{X_ij > 0} f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 with
f(x) = min(1, (x / x_max)^power); AdaGrad over the non-zeros in a random order each epoch, as
glove.c (whose squared-gradient sums, initialised to 1, accumulate the lr-scaled gradient); the
word vectors are W + C (the paper's W + W~). The factor 1/2 is glove.c's (the paper has none).
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from llmlab.embed import kernel
from llmlab.log import get_logger

CHUNK_TOKENS = 2_000_000


def cooccurrence(ids: np.ndarray, sent_starts: np.ndarray, vocab_size: int, window: int = 10) -> sp.csr_matrix:
    """Symmetric 1/distance-weighted co-occurrence counts within sentences (float64 CSR)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    sent = np.repeat(np.arange(len(sent_starts) - 1), np.diff(sent_starts))
    total = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    for lo in range(0, n, CHUNK_TOKENS):
        hi = min(n, lo + CHUNK_TOKENS + window)  # pairs starting in [lo, lo+CHUNK) only
        a_ids, a_sent = ids[lo:hi], sent[lo:hi]
        rows, cols, vals = [], [], []
        for d in range(1, window + 1):
            starts = min(CHUNK_TOKENS, len(a_ids) - d)
            if starts <= 0:
                break
            same = a_sent[:starts] == a_sent[d:d + starts]
            i, j = a_ids[:starts][same], a_ids[d:d + starts][same]
            rows += [i, j]
            cols += [j, i]
            vals.append(np.full(2 * len(i), 1.0 / d))
        if rows:
            total = total + sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                          shape=(vocab_size, vocab_size)).tocsr()
    total.sum_duplicates()
    return total


def weights(x: np.ndarray, x_max: float = 100.0, power: float = 0.75) -> np.ndarray:
    """f(x) = min(1, (x / x_max)^power)."""
    return np.minimum(1.0, (np.asarray(x, dtype=np.float64) / x_max) ** power)


def loss_and_grads(W, C, bw, bc, rows, cols, x, x_max=100.0, power=0.75):
    """J and its gradients wrt W, C, bw, bc (numpy, float64): the reference for the kernel."""
    diff = np.einsum("ij,ij->i", W[rows], C[cols]) + bw[rows] + bc[cols] - np.log(x)
    fdiff = weights(x, x_max, power) * diff
    gW, gC = np.zeros_like(W), np.zeros_like(C)
    np.add.at(gW, rows, fdiff[:, None] * C[cols])
    np.add.at(gC, cols, fdiff[:, None] * W[rows])
    gbw, gbc = np.zeros_like(bw), np.zeros_like(bc)
    np.add.at(gbw, rows, fdiff)
    np.add.at(gbc, cols, fdiff)
    return 0.5 * float(np.sum(fdiff * diff)), gW, gC, gbw, gbc


def _epoch_numpy(WB, CB, GW, GC, rows, cols, logx, fx, order, lr, batch=4096):
    """Fallback (no C compiler): the same AdaGrad step, vectorised over mini-batches (the
    updates inside a batch use the batch-start parameters)."""
    d = WB.shape[1] - 1
    loss = 0.0
    for s in range(0, len(order), batch):
        k = order[s:s + batch]
        r, c = rows[k], cols[k]
        w, cv = WB[r], CB[c]
        diff = np.einsum("ij,ij->i", w[:, :d], cv[:, :d]) + w[:, d] + cv[:, d] - logx[k]
        fdiff = fx[k] * diff
        loss += 0.5 * float(np.sum(fdiff * diff))
        fdiff *= lr
        gw = np.concatenate([fdiff[:, None] * cv[:, :d], fdiff[:, None]], 1)
        gc = np.concatenate([fdiff[:, None] * w[:, :d], fdiff[:, None]], 1)
        np.add.at(WB, r, -gw / np.sqrt(GW[r]))
        np.add.at(CB, c, -gc / np.sqrt(GC[c]))
        np.add.at(GW, r, gw * gw)
        np.add.at(GC, c, gc * gc)
    return loss


def train(cooc: sp.csr_matrix, vector_size: int = 100, epochs: int = 25, alpha: float = 0.05,
          x_max: float = 100.0, power: float = 0.75, seed: int = 1, workers: int = 1,
          progress: bool = True) -> tuple[np.ndarray, list[float]]:
    """Returns (W + C as float32 [V, vector_size], the loss J of each epoch)."""
    coo = cooc.tocoo()
    rows, cols = coo.row.astype(np.int32), coo.col.astype(np.int32)
    logx = np.log(coo.data).astype(np.float32)
    fx = weights(coo.data, x_max, power).astype(np.float32)
    v, d = cooc.shape[0], vector_size
    rng = np.random.default_rng(seed)
    WB = ((rng.random((v, d + 1), dtype=np.float32) - 0.5) / (d + 1)).astype(np.float32)
    CB = ((rng.random((v, d + 1), dtype=np.float32) - 0.5) / (d + 1)).astype(np.float32)
    GW, GC = np.ones_like(WB), np.ones_like(CB)
    lib = kernel.load()
    losses = []
    log = get_logger()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(len(rows)).astype(np.int64)
        if lib is not None:
            loss = lib.llmlab_glove_epoch(WB.ctypes.data, CB.ctypes.data, GW.ctypes.data, GC.ctypes.data,
                                          rows.ctypes.data, cols.ctypes.data, logx.ctypes.data, fx.ctypes.data,
                                          order.ctypes.data, len(order), d, alpha, max(1, workers))
        else:
            loss = _epoch_numpy(WB, CB, GW, GC, rows, cols, logx, fx, order, alpha)
        losses.append(loss / max(1, len(rows)))
        if progress:
            log.info(f"glove epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    return (WB[:, :d] + CB[:, :d]).astype(np.float32), losses
