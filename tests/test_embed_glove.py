"""GloVe: co-occurrence counts, loss and gradients by hand, the kernel's AdaGrad epoch against a
plain sequential loop."""
import numpy as np
import pytest

from llmlab.embed import glove, kernel


def test_cooccurrence_hand_checked():
    # sentence "a b c a" (ids 0 1 2 0) + "b c" ; window 2, 1/distance, symmetric, no crossing sentences
    x = glove.cooccurrence(np.array([0, 1, 2, 0, 1, 2]), np.array([0, 4, 6]), 3, window=2).toarray()
    want = np.zeros((3, 3))
    for i, j, w in [(0, 1, 1), (0, 2, .5), (1, 2, 1), (1, 0, .5), (2, 0, 1), (1, 2, 1)]:
        want[i, j] += w
        want[j, i] += w
    np.testing.assert_allclose(x, want)
    assert np.allclose(x, x.T)


def test_cooccurrence_chunks_equal_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    ids, starts = rng.integers(0, 50, 5000), np.array([0, 1200, 1201, 3999, 5000])
    one = glove.cooccurrence(ids, starts, 50, 4).toarray()
    monkeypatch.setattr(glove, "CHUNK_TOKENS", 333)
    np.testing.assert_allclose(glove.cooccurrence(ids, starts, 50, 4).toarray(), one, rtol=1e-12)


def test_loss_and_gradients_by_hand():
    W = np.array([[0.1, -0.2], [0.3, 0.4]])
    C = np.array([[0.5, 0.1], [-0.3, 0.2]])
    bw, bc = np.array([0.01, -0.02]), np.array([0.03, 0.0])
    rows, cols, x = np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([2.0, 150.0, 10.0])
    J, gW, gC, gbw, gbc = glove.loss_and_grads(W, C, bw, bc, rows, cols, x)
    # by hand: f(2) = (2/100)^0.75, f(150) = 1, f(10) = 0.1^0.75
    f = [(0.02) ** 0.75, 1.0, 0.1 ** 0.75]
    d = [0.1 * -0.3 + -0.2 * 0.2 + 0.01 + 0.0 - np.log(2),
         0.3 * 0.5 + 0.4 * 0.1 - 0.02 + 0.03 - np.log(150),
         0.3 * -0.3 + 0.4 * 0.2 - 0.02 + 0.0 - np.log(10)]
    assert J == pytest.approx(0.5 * sum(fi * di * di for fi, di in zip(f, d)))
    np.testing.assert_allclose(gW[0], f[0] * d[0] * C[1])
    np.testing.assert_allclose(gW[1], f[1] * d[1] * C[0] + f[2] * d[2] * C[1])
    np.testing.assert_allclose(gC[0], f[1] * d[1] * W[1])
    np.testing.assert_allclose(gbc, [f[1] * d[1], f[0] * d[0] + f[2] * d[2]])
    np.testing.assert_allclose(gbw, [f[0] * d[0], f[1] * d[1] + f[2] * d[2]])
    # and a finite difference on one coordinate
    eps = 1e-6
    W2 = W.copy()
    W2[1, 0] += eps
    assert (glove.loss_and_grads(W2, C, bw, bc, rows, cols, x)[0] - J) / eps == pytest.approx(gW[1, 0], rel=1e-4)


def test_kernel_epoch_is_sequential_adagrad():
    lib = kernel.load()
    if lib is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(1)
    v, d, n = 6, 4, 20
    rows, cols = rng.integers(0, v, n).astype(np.int32), rng.integers(0, v, n).astype(np.int32)
    x = rng.uniform(0.5, 200, n)
    logx, fx = np.log(x).astype(np.float32), glove.weights(x).astype(np.float32)
    WB, CB = rng.normal(0, .1, (v, d + 1)).astype(np.float32), rng.normal(0, .1, (v, d + 1)).astype(np.float32)
    GW, GC = np.ones_like(WB), np.ones_like(CB)
    order = rng.permutation(n).astype(np.int64)
    w64, c64, gw64, gc64 = (a.astype(np.float64) for a in (WB, CB, GW, GC))
    loss = 0.0
    lr = 0.05
    for k in order:  # glove.c's update, written out
        i, j = rows[k], cols[k]
        diff = w64[i, :d] @ c64[j, :d] + w64[i, d] + c64[j, d] - np.log(x[k])
        fd = glove.weights(x[k]) * diff
        loss += 0.5 * fd * diff
        g_w = lr * fd * np.append(c64[j, :d], 1.0)
        g_c = lr * fd * np.append(w64[i, :d], 1.0)
        w64[i] -= g_w / np.sqrt(gw64[i])
        c64[j] -= g_c / np.sqrt(gc64[j])
        gw64[i] += g_w ** 2
        gc64[j] += g_c ** 2
    got = lib.llmlab_glove_epoch(WB.ctypes.data, CB.ctypes.data, GW.ctypes.data, GC.ctypes.data, rows.ctypes.data,
                                 cols.ctypes.data, logx.ctypes.data, fx.ctypes.data, order.ctypes.data, n, d, lr, 1)
    assert got == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(WB, w64, atol=1e-5)
    np.testing.assert_allclose(GC, gc64, rtol=1e-4)


def test_training_lowers_the_loss_kernel_and_fallback(monkeypatch):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 40, 4000) // (1 + rng.integers(0, 3, 4000))
    cooc = glove.cooccurrence(ids, np.array([0, 4000]), 40, 5)
    vecs, losses = glove.train(cooc, 8, epochs=6, progress=False)
    assert vecs.shape == (40, 8) and losses[-1] < losses[0] * 0.8
    monkeypatch.setattr(kernel, "_LIB", [None])
    _, slow = glove.train(cooc, 8, epochs=6, progress=False)
    assert slow[-1] < slow[0] * 0.8
