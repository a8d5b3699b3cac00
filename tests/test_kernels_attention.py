"""C decode attention (llmlab/kernels/attention.c) against torch's SDPA, on a paged and a
contiguous cache layout, with grouped-query heads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.kernels import attention

pytestmark = pytest.mark.skipif(attention.load() is None, reason="no C compiler: the kernel is not built")


@pytest.mark.parametrize("threads", [1, 2])
def test_paged_decode_attention_matches_sdpa(threads):
    g = torch.Generator().manual_seed(0)
    H, Hkv, D, n_slots = 6, 2, 64, 300
    kc, vc = torch.randn(n_slots, Hkv, D, generator=g), torch.randn(n_slots, Hkv, D, generator=g)
    lens = [1, 17, 130]
    perm = torch.randperm(n_slots, generator=g)
    seqs = [perm[sum(lens[:i]):sum(lens[:i + 1])] for i in range(3)]  # scattered slots, as blocks are
    q = torch.randn(3, H, D, generator=g) * 2
    offs = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    out = attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, torch.cat(seqs), offs, threads)
    for b, sl in enumerate(seqs):
        ref = F.scaled_dot_product_attention(q[b][None, :, None], kc[sl].transpose(0, 1)[None],
                                             vc[sl].transpose(0, 1)[None], enable_gqa=True)[0, :, 0]
        assert (out[b] - ref).abs().max() < 2e-6 * max(1.0, float(ref.abs().max())), b
    # a sequence's result does not depend on the others in the batch
    alone = attention.decode_attention(q[2:], kc, vc, Hkv, Hkv * D, D, seqs[2], torch.tensor([0, lens[2]]))
    assert torch.equal(alone[0], out[2])


def test_contiguous_layout_and_bad_input():
    g = torch.Generator().manual_seed(1)
    Hkv, T, D = 3, 40, 32
    k, v = torch.randn(Hkv, T, D, generator=g), torch.randn(Hkv, T, D, generator=g)
    q = torch.randn(1, 9, D, generator=g)
    n = 25  # attend over the first 25 positions of the cache
    out = attention.decode_attention(q, k, v, Hkv, D, T * D, torch.arange(n), torch.tensor([0, n]))
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None, :, :n], v[None, :, :n], enable_gqa=True)
    assert (out - ref[0].transpose(0, 1)).abs().max() < 2e-6
    with pytest.raises(ValueError):
        attention.decode_attention(q.double(), k, v, Hkv, D, T * D, torch.arange(n), torch.tensor([0, n]))
    with pytest.raises(ValueError):
        attention.decode_attention(q, k, v, Hkv, D, T * D, torch.arange(n), torch.tensor([0, n, n]))


@pytest.mark.parametrize("split", [0, 64, 100])
def test_flash_decoding_split_matches_sdpa_and_is_invariant(split):
    """Flash-Decoding: sequences longer than `split` keys run as chunks merged by log-sum-exp.
    Against SDPA (float64); a sequence's bits do not depend on the batch or the thread count;
    sequences up to `split` keys are computed exactly as without splitting."""
    g = torch.Generator().manual_seed(2)
    H, Hkv, D, n_slots = 6, 2, 64, 1200
    kc, vc = torch.randn(n_slots, Hkv, D, generator=g), torch.randn(n_slots, Hkv, D, generator=g)
    lens = [1, 64, 65, 100, 333, 617]  # at, just over and far over the split sizes
    perm = torch.randperm(n_slots, generator=g)
    seqs = [perm[sum(lens[:i]):sum(lens[:i + 1])] for i in range(len(lens))]
    q = torch.randn(len(lens), H, D, generator=g) * 3  # peaked softmax: chunk maxima differ a lot
    offs = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    out = attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, torch.cat(seqs), offs, 1, split)
    whole = attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, torch.cat(seqs), offs, 1, 0)
    for b, sl in enumerate(seqs):
        ref = F.scaled_dot_product_attention(q[b][None, :, None].double(), kc[sl].transpose(0, 1)[None].double(),
                                             vc[sl].transpose(0, 1)[None].double(), enable_gqa=True)[0, :, 0]
        assert (out[b].double() - ref).abs().max() < 3e-6 * max(1.0, float(ref.abs().max())), b
        if split == 0 or lens[b] <= split:
            assert torch.equal(out[b], whole[b]), b
    assert split == 0 or not torch.equal(out[-1], whole[-1])  # the long one really took the split path
    two = attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, torch.cat(seqs), offs, 2, split)
    assert torch.equal(two, out)
    alone = attention.decode_attention(q[4:5], kc, vc, Hkv, Hkv * D, D, seqs[4], torch.tensor([0, lens[4]]), 2, split)
    assert torch.equal(alone[0], out[4])


def test_paged_and_contiguous_layouts_give_the_same_bits():
    """The paged layout runs one work item per sequence over all its K/V heads, the contiguous one
    an item per (sequence, head): every head is computed in the same order, so the bits agree."""
    g = torch.Generator().manual_seed(3)
    Hkv, T, D, H = 3, 50, 64, 9
    kc, vc = torch.randn(T, Hkv, D, generator=g), torch.randn(T, Hkv, D, generator=g)  # paged: (slot, head, D)
    q = torch.randn(1, H, D, generator=g)
    n = 37
    paged = attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, torch.arange(n), torch.tensor([0, n]))
    kt, vt = kc.transpose(0, 1).contiguous(), vc.transpose(0, 1).contiguous()  # contiguous: (head, T, D)
    contiguous = attention.decode_attention(q, kt, vt, Hkv, D, T * D, torch.arange(n), torch.tensor([0, n]))
    assert torch.equal(paged, contiguous)


@pytest.mark.parametrize("D", [32, 64, 128])
def test_avx2_path_gives_the_bits_of_the_plain_loops(D):
    """Head sizes that are multiples of 32 take the AVX2 path (level 1: q.k as two 8-lane halves and
    one tree, p.V with the outputs in registers; level 2: the scores 4 keys at a time, the softmax's
    max and e^x on 8 lanes, 4 heads' sums side by side); the same build's plain C loops give the
    same bits, for whole sequences and Flash-Decoding chunks (split), with 1, 2, 3 and 5 query heads
    per K/V head, key counts that are and are not multiples of 4 and 8, scores from small to ones
    that reach e^x's clamp at -87 (q x 40), and a query with a NaN."""
    lib = attention.load()
    g = torch.Generator().manual_seed(D)
    try:
        for H, Hkv in ((6, 2), (4, 2), (3, 3), (9, 3), (5, 1)):
            kc, vc = torch.randn(400, Hkv, D, generator=g), torch.randn(400, Hkv, D, generator=g)
            lens = [1, 40, 300, 7, 13]
            slots = torch.randperm(400, generator=g)[:sum(lens)]
            offs = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
            for qscale in (2.0, 40.0):
                q = torch.randn(len(lens), H, D, generator=g) * qscale
                q[3, 0, 5] = float("nan")
                for split in (0, 64):
                    runs = []
                    for fast in (2, 1, 0):
                        built = lib.llmlab_attention_fast(fast)
                        runs.append(attention.decode_attention(q, kc, vc, Hkv, Hkv * D, D, slots, offs, 1, split))
                    if not built:
                        pytest.skip("the AVX2 path is not compiled in (no AVX2 + FMA)")
                    for r in runs[:2]:
                        assert torch.equal(r.view(torch.int32), runs[2].view(torch.int32)), (D, H, Hkv, split, qscale)
    finally:
        lib.llmlab_attention_fast(attention.level())


def test_vector_exp_is_the_scalar_exp():
    """attention.c's 8-lane e^x (level 2's softmax) gives the scalar exp_neg's bits on x <= 0: a
    dense grid over [-100, 0], the clamp at -87, -0, and 100,000 random values."""
    lib = attention.load()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-100, 0, 200_001), -torch.rand(100_000, generator=g) * 90,
                   torch.tensor([-0.0, 0.0, -87.0, -87.00001, -86.99999, -1e-30, -1e-45, -float("inf")])])
    a, b = torch.empty_like(x), torch.empty_like(x)
    if not lib.llmlab_attention_exp_check(x.data_ptr(), x.numel(), a.data_ptr(), b.data_ptr()):
        pytest.skip("the AVX2 path is not compiled in (no AVX2 + FMA)")
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert torch.allclose(a[:200_001], torch.exp(x[:200_001]).clamp_min(torch.exp(torch.tensor(-87.0))), rtol=1e-6)
