"""Pretraining objectives (llmlab.train.objectives): exact constructions against T5's reference
behaviour and hand-computed cases, the published statistics of each corruption, and batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.errors import UserError
from llmlab.train.objectives import build_objective, decoder_batch, seq2seq_batch, special
from llmlab.train.objectives.base import Example, ObjectiveLoader
from llmlab.train.objectives.fim import fim_rearrange
from llmlab.train.objectives.mlm import mask_tokens
from llmlab.train.objectives.span_corruption import (corrupted_lengths, noise_counts, random_segmentation,
                                                     random_spans_noise_mask, span_corrupt)
from llmlab.train.loader import TokenArrayLoader


def test_span_corruption_t5_paper_example():
    """Raffel et al. 2020, Figure 2: sentinels <X>, <Y>, <Z> are ids 99, 98, 97 (T5: vocab-1-k)."""
    words = "Thank you for inviting me to your party last week .".split()
    noise = [w in ("for", "inviting", "last") for w in words]
    name = {99: "<X>", 98: "<Y>", 97: "<Z>"}
    inputs, targets = span_corrupt(list(range(len(words))), np.array(noise), [99, 98, 97])
    show = lambda ids: " ".join(name.get(i, words[i] if i < len(words) else "?") for i in ids)  # noqa: E731
    assert show(inputs) == "Thank you <X> me to your party <Y> week ."
    assert show(targets) == "<X> for inviting <Y> last <Z>"
    inputs, targets = span_corrupt([5, 6, 7], np.array([False, True, True]), [9, 8], eos_id=1)
    assert (inputs, targets) == ([5, 9, 1], [9, 6, 7, 1])  # T5 appends EOS to both


def test_span_lengths_match_t5_random_spans_helper():
    """T5's default: 568 raw tokens -> inputs 512 and targets 114 (with EOS); 569 overflows."""
    assert noise_counts(568, 0.15, 3.0) == (85, 28)
    assert corrupted_lengths(568, 0.15, 3.0, eos=True) == (512, 114)
    assert corrupted_lengths(569, 0.15, 3.0, eos=True)[0] > 512
    assert noise_counts(10, 0.15, 3.0) == (2, 1)  # round(1.5) = 2 (half to even), spans max(round(.67), 1)
    assert noise_counts(1, 0.5, 3.0) == (1, 1)  # length clamps to 2: one noise token, one span


@pytest.mark.parametrize("n,density,mu", [(100, 0.15, 3.0), (64, 0.5, 8.0), (37, 0.15, 64.0), (500, 0.3, 2.0)])
def test_noise_mask_properties(n, density, mu):
    num_noise, num_spans = noise_counts(n, density, mu)
    sentinels = [10_000 - k for k in range(200)]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        mask = random_spans_noise_mask(n, density, mu, rng)
        assert mask.sum() == num_noise and not mask[0] and mask[-1]  # starts with non-noise, ends with noise
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        assert len(starts) == num_spans
        toks = list(range(n))
        inputs, targets = span_corrupt(toks, mask, sentinels)
        assert (len(inputs), len(targets)) == corrupted_lengths(n, density, mu, eos=False)
        # the original comes back by putting each target span in place of its sentinel
        spans, cur = {}, None
        for t in targets:
            if t in sentinels:
                cur = spans.setdefault(t, [])
            else:
                cur.append(t)
        rebuilt = [x for t in inputs for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == toks


def test_short_sequences_have_one_span_at_the_end():
    """A known property of T5's mask: at n <= 30 (15 %, mu 3) there is one span, so the mask is the
    last round(0.15 n) tokens whatever the seed (n = 30: 26 kept, 4 noise); n = 31 has two spans."""
    for seed in range(10):
        assert random_spans_noise_mask(30, 0.15, 3.0, np.random.default_rng(seed)).tolist() == [False] * 26 + [True] * 4
    masks = {tuple(random_spans_noise_mask(31, 0.15, 3.0, np.random.default_rng(s))) for s in range(10)}
    assert len(masks) > 1


def test_random_segmentation_and_mean_span_length():
    rng = np.random.default_rng(0)
    seg = random_segmentation(20, 6, rng)
    assert seg.sum() == 20 and len(seg) == 6 and seg.min() >= 1
    lengths = []
    for seed in range(50):
        mask = random_spans_noise_mask(1000, 0.15, 3.0, np.random.default_rng(seed))
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]]))))[::2]
        lengths.extend(runs)
    assert abs(np.mean(lengths) - 150 / 50) < 0.05  # 150 noise tokens in round(150/3) = 50 spans


def test_mlm_80_10_10():
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 1000, 200_000)
    inputs, labels = map(np.asarray, mask_tokens(toks, rng, mask_id=1000, vocab_size=1000, probability=0.15))
    sel = labels != -100
    assert abs(sel.mean() - 0.15) < 0.005
    assert np.array_equal(labels[sel], toks[sel]) and np.array_equal(inputs[~sel], toks[~sel])
    masked, kept = (inputs[sel] == 1000).mean(), (inputs[sel] == toks[sel]).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - (0.1 + 0.1 / 1000)) < 0.01  # a random draw may hit itself
    assert inputs.max() <= 1000


def test_fim_psm_spm_layout():
    ids = {"<fim_prefix>": 90, "<fim_middle>": 91, "<fim_suffix>": 92}
    toks = [1, 2, 3, 4, 5, 6]
    assert fim_rearrange(toks, 2, 4, ids, spm=False) == [90, 1, 2, 92, 5, 6, 91, 3, 4]
    assert fim_rearrange(toks, 2, 4, ids, spm=True) == [90, 92, 5, 6, 91, 1, 2, 3, 4]
    obj = build_objective("fim", fim_rate=1.0, fim_spm_rate=0.0)
    ex = obj.example(list(range(20)), np.random.default_rng(0), ids)
    assert ex.targets[0] == 90 and sorted(t for t in ex.targets if t < 90) == list(range(17))
    assert build_objective("fim", fim_rate=0.0).example(toks, np.random.default_rng(0), ids).targets == toks
    with pytest.raises(UserError, match="fim_rate"):
        build_objective("fim", fim_rate=2.0)


def test_ul2_mode_tokens_and_denoisers():
    obj = build_objective("ul2", num_sentinels=100)
    ids = special.allot(500, obj.special_tokens)
    modes = {ids["[R]"]: "R", ids["[S]"]: "S", ids["[X]"]: "X"}
    sentinel_ids = {ids[f"<extra_id_{k}>"] for k in range(100)}
    seen, noise = {"R": 0, "S": 0, "X": 0}, {"R": [], "X": []}
    rng = np.random.default_rng(0)
    for _ in range(700):
        ex = obj.example(list(range(400)), rng, ids)
        mode = modes[ex.inputs[0]]
        seen[mode] += 1
        has_sentinel = any(t in sentinel_ids for t in ex.inputs)
        if mode == "S":  # prefix LM: the input is a prefix, the target the rest, in order, no sentinels
            assert not has_sentinel and ex.inputs[1:] + ex.targets == list(range(399))
            assert len(ex.targets) <= 200
        else:
            assert has_sentinel
            noise[mode].append(sum(t not in sentinel_ids for t in ex.targets) / 399)
    assert all(abs(seen[m] / 700 - w) < 0.06 for m, w in (("R", 2 / 7), ("S", 1 / 7), ("X", 4 / 7)))
    assert np.mean(noise["R"]) < 0.2 < np.mean(noise["X"])  # R 15 %, X mostly 50 %


def test_special_tokens_follow_t5_ids():
    ids = special.allot(256, ["[MASK]", "<extra_id_0>", "<extra_id_1>", "[S]"])
    assert ids == {"[MASK]": 256, "[S]": 257, "<extra_id_0>": 259, "<extra_id_1>": 258}
    files = special.add_to_tokenizer_files({"tokenizer.json": '{"added_tokens": []}'}, ids)
    assert '"<extra_id_0>"' in files["tokenizer.json"]


def test_batches_decoder_and_seq2seq():
    exs = [Example([1, 2], [3, 4, 5]), Example([], [6, 7, 8])]
    x, y = decoder_batch(exs, 4, pad_id=0, prefix=True)
    assert x["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    assert y.tolist() == [[-100, 3, 4, 5], [7, 8, -100, -100]]  # the prefix is read, not predicted
    assert x["prefix_lengths"].tolist() == [2, 0]
    x, y = seq2seq_batch(exs, pad_id=0, decoder_start_id=9)
    assert x["input_ids"].tolist() == [[1, 2], [0, 0]] and x["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert x["decoder_input_ids"].tolist() == [[9, 3, 4], [9, 6, 7]] and y.tolist() == [[3, 4, 5], [6, 7, 8]]


def test_objective_loader_resumes_exactly():
    obj = build_objective("span_corruption")
    ids = special.allot(100, obj.special_tokens)
    mk = lambda: ObjectiveLoader(TokenArrayLoader(torch.arange(2000) % 100, 32, 2), obj, ids, "prefix", seed=3)  # noqa: E731
    a = mk()
    it = iter(a)
    next(it)
    state = a.state_dict()
    want = next(it)
    b = mk()
    b.load_state_dict(state)
    got = next(iter(b))
    assert torch.equal(got[0]["input_ids"], want[0]["input_ids"]) and torch.equal(got[1], want[1])


def test_prefix_decoder_mask():
    """Prefix positions see each other both ways; the rest is causal; prefix 0 = the causal model."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.model.kv_cache import KVCache
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                prefix_lm=True)).eval()
    x = torch.randint(0, 50, (1, 10))
    x2 = x.clone()
    x2[0, 3] = (x[0, 3] + 1) % 50  # change a prefix token (prefix = 5)
    x3 = x.clone()
    x3[0, 7] = (x[0, 7] + 1) % 50  # change a target token
    with torch.no_grad():
        a, b, c = (m(t, prefix_lengths=5) for t in (x, x2, x3))
        assert (a[0, :3] - b[0, :3]).abs().max() > 1e-4  # earlier prefix positions see position 3
        assert torch.allclose(a[0, :7], c[0, :7], atol=1e-6)  # nothing before 7 sees it
        assert torch.allclose(m(x, prefix_lengths=0), m(x.clone().unsqueeze(0)[0]), atol=1e-6)
        cache = KVCache.for_model(m, 1, 16)
        assert torch.allclose(m(x, cache=cache)[0, -1], m(x, prefix_lengths=10)[0, -1], atol=1e-5)


@pytest.mark.parametrize("objective,arch", [("ul2", "encoder_decoder"), ("mlm", ""), ("fim", ""), ("prefix_lm", "")])
def test_make_api_one_step(objective, arch):
    """The API other tools call: a model for (objective, architecture), its loader, one loss."""
    from llmlab.model import ModelConfig
    from llmlab.train.objectives import model_loss
    from llmlab.train.objectives.setup import make
    st = make(objective, ModelConfig(vocab_size=1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2), 100,
              architecture=arch)
    assert st.model.config.vocab_size == 100 + len(st.ids)
    inputs, labels = next(iter(st.loader(TokenArrayLoader(torch.arange(3000) % 100, 64, 4))))
    loss = model_loss(st.model, inputs, labels)
    loss.backward()
    assert 3.0 < float(loss.detach()) < 7.0  # about ln(vocab) at init
    grid = ("[MASK]", "[R]", "[S]", "[X]", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
            *(f"<extra_id_{k}>" for k in range(100)), "<pad>")
    cfg = ModelConfig(vocab_size=1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    other = "prefix_lm" if arch == "encoder_decoder" else "causal_lm"
    a, b = (make(o, cfg, 100, architecture=arch, reserve_tokens=grid) for o in (other, objective))
    assert a.ids == b.ids and len(a.ids) == len(grid)  # one vocabulary for a whole grid
    with pytest.raises(UserError, match="causal-only"):
        make("mlm", st.model.config if arch != "encoder_decoder" else ModelConfig(), 100, architecture="decoder")
