"""Speculative decoding: prompt lookup, exact rejection-sampling acceptance (the output distribution
is the target's), greedy output identical to plain decoding, draft models, refusals, fallback."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingParams
from llmlab.infer.speculative import Fallback, accept, check_same_tokenizer, prompt_lookup
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def _model(seed, vocab=97, layers=2, hidden=64):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    return _model(0)


def _copy_prompts(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (int(torch.randint(5, 14, (1,), generator=g)),), generator=g).tolist() * 4
            for _ in range(n)]


def test_prompt_lookup_finds_the_latest_longest_match():
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 2) == [7, 8]  # latest occurrence of (1, 2, 3)
    assert prompt_lookup([5, 6, 1, 2, 5, 6], 3) == [1, 2, 5]
    assert prompt_lookup([4, 9, 4], 3) == [9, 4]  # falls back to a 1-gram
    assert prompt_lookup([1, 2, 3], 3) == []


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    exp = probs * counts.sum()
    keep = exp > 0
    assert counts[~keep].sum() == 0, "a token with probability 0 was emitted"
    return float(((counts[keep] - exp[keep]) ** 2 / exp[keep]).sum())


@pytest.mark.parametrize("deterministic", [False, True])
def test_rejection_sampling_keeps_the_target_distribution(deterministic):
    """Emitted tokens at positions 1 and 2 of a 2-token draft are distributed as the target's p
    (chi-square on a 5-token vocabulary; the 99.9 % critical value for 4 degrees of freedom is 18.5)."""
    g = torch.Generator().manual_seed(0)
    V = 5
    p = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.05, 0.3, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.1, 0.1, 0.2, 0.5], [0.4, 0.3, 0.1, 0.1, 0.1]])
    n = 10000
    first, second_given_acc = torch.zeros(V), torch.zeros(V)
    for _ in range(n):
        if deterministic:  # prompt lookup: a fixed draft, q one-hot
            draft, qs = [3, 0], None
        else:
            draft = [int(torch.multinomial(q[0], 1, generator=g)), int(torch.multinomial(q[1], 1, generator=g))]
            qs = [q[0], q[1]]
        toks, a = accept(draft, qs, p, g)
        assert len(toks) == a + 1 and toks[:a] == draft[:a]
        first[toks[0]] += 1
        if len(toks) > 1:
            second_given_acc[toks[1]] += 1
    assert _chi2(first, p[0]) < 18.5
    assert _chi2(second_given_acc, p[1]) < 18.5  # p here does not depend on the first token
    # a broken acceptance (always accept) would fail: q != p
    assert _chi2(torch.bincount(torch.multinomial(q[0], n, True, generator=g), minlength=V).float(), p[0]) > 100


def test_greedy_acceptance_is_the_argmax():
    p = torch.zeros(3, 6)
    p[0, 2] = p[1, 4] = p[2, 1] = 1.0
    assert accept([2, 4], None, p) == ([2, 4, 1], 2)
    assert accept([2, 5], None, p) == ([2, 4], 1)
    assert accept([0, 4], [torch.full((6,), 1 / 6)] * 2, p) == ([2], 0)


def test_greedy_ngram_speculation_equals_plain_decoding(tiny):
    prompts = _copy_prompts(6)
    p = SamplingParams(max_new_tokens=30, ignore_eos=True)
    ref = Engine(tiny, None, num_blocks=128).generate(prompts, p)
    eng = Engine(tiny, None, num_blocks=128, speculative="ngram", speculative_fallback=False)
    assert eng.generate(prompts, p) == ref
    sp = eng.spec_summary()
    assert sp["verify_steps"] > 0 and sp["mean_accepted"] > 0  # drafts were made and some accepted
    assert all(r == 0 for r in eng.cache.alloc.ref)  # every block released


def test_greedy_draft_model_equals_plain_decoding_and_accepts_itself(tiny):
    prompts = _copy_prompts(4, seed=3)
    p = SamplingParams(max_new_tokens=20, ignore_eos=True)
    ref = Engine(tiny, None, num_blocks=128).generate(prompts, p)
    other = _model(7, layers=1, hidden=32)
    eng = Engine(tiny, None, num_blocks=128, speculative="draft", speculative_fallback=False, draft_model=other)
    assert eng.generate(prompts, p) == ref
    same = Engine(tiny, None, num_blocks=128, speculative="draft", speculative_fallback=False, draft_model=tiny)
    assert same.generate(prompts, p) == ref
    assert same.spec_summary()["acceptance_rate"] == 1.0  # the target as its own draft: every draft agrees


def test_sampled_speculation_keeps_the_model_distribution():
    """Through the engine: the 2nd generated token (drafted by a different model, then verified) has
    the target's exact marginal sum_t1 p(t1) p(t2 | t1) (chi-square, vocabulary of 8, 1,000 requests)."""
    target, draft = _model(1, vocab=8), _model(2, vocab=8, layers=1, hidden=32)
    prompt = [1, 2, 3, 4]
    with torch.no_grad():
        p1 = target(torch.tensor([prompt]))[0, -1].softmax(-1)
        p2 = sum(p1[t] * target(torch.tensor([prompt + [t]]))[0, -1].softmax(-1) for t in range(8))
    eng = Engine(target, None, num_blocks=256, max_num_seqs=64, speculative="draft", num_speculative_tokens=2,
                 speculative_fallback=False, draft_model=draft)
    n = 1000
    params = [SamplingParams(max_new_tokens=3, temperature=1.0, seed=i, ignore_eos=True) for i in range(n)]
    outs = eng.generate([prompt] * n, params)
    counts = torch.bincount(torch.tensor([o[0][1] for o in outs]), minlength=8).float()
    assert eng.stats["spec_steps"] > 0
    assert _chi2(counts, p2) < 24.3  # 99.9 % critical value, 7 degrees of freedom


def test_a_draft_with_another_tokenizer_is_refused():
    class Tok:
        def __init__(self, table):
            self.table, self.vocab_size, self.eos_id = table, len(table), 0

        def decode_bytes(self, ids):
            return b"".join(self.table[i] for i in ids)

    check_same_tokenizer(Tok([b"a", b"b"]), Tok([b"a", b"b"]), "d")
    with pytest.raises(UserError, match="another tokenizer"):
        check_same_tokenizer(Tok([b"a", b"b"]), Tok([b"a", b"c"]), "d")
    with pytest.raises(UserError, match="another tokenizer"):
        check_same_tokenizer(Tok([b"a", b"b"]), Tok([b"a", b"b", b"c"]), "d")


def test_beam_search_with_speculation_is_not_supported():
    from llmlab.infer.commands import GenerateConfig, run_generate
    with pytest.raises(UserError, match="beam search is not supported"):  # before any model is loaded
        run_generate(GenerateConfig(prompt="hi", num_beams=2, speculative="ngram"))


def _drive(fb, steps, spec_cost, plain_cost, seed=0):
    """Run the fallback against fake timings: cost(rng) -> (tokens, seconds). -> modes used."""
    import random
    rng, modes = random.Random(seed), []
    for _ in range(steps):
        spec = fb.use_spec()
        modes.append(spec)
        fb.record(spec, *(spec_cost if spec else plain_cost)(rng))
    return modes


def test_fallback_never_keeps_a_slightly_slower_speculation():
    """A fake verifier 9 % slower than plain steps, with +-20 % noise per step (a loaded machine):
    every probe decides for plain, so speculation only runs inside probes."""
    fb = Fallback()
    modes = _drive(fb, 3000, lambda r: (2.6, r.uniform(0.8, 1.2)), lambda r: (1.0, 0.35 * r.uniform(0.8, 1.2)))
    assert fb.decided is False and fb.rate[True] < fb.rate[False]
    assert sum(modes) < 0.05 * len(modes)  # the holds (128, 256, ... steps) run plain
    assert fb.hold > fb.hold0  # the choice was confirmed: the hold grew


def test_fallback_keeps_a_clearly_faster_speculation_and_probes_little():
    fb = Fallback()
    modes = _drive(fb, 600, lambda r: (3.0, r.uniform(0.9, 1.1)), lambda r: (1.0, 0.5 * r.uniform(0.9, 1.1)))
    assert fb.decided is True and fb.rate[True] > 1.4 * fb.rate[False]
    assert modes[:4] == [True, False, True, False]  # probes alternate the modes step by step
    assert len(modes) - sum(modes) < 0.1 * len(modes)  # a clear difference ends a probe at min_probe


def test_fallback_undecided_runs_plain():
    """Equal speeds: the probe runs to max_probe and keeps plain (speculation must show it is faster)."""
    fb = Fallback(min_probe=4, max_probe=12)
    _drive(fb, 24, lambda r: (2.0, r.uniform(0.5, 1.5)), lambda r: (1.0, 0.5 * r.uniform(0.5, 1.5)))
    assert fb.decided is False and fb.hold_left > 0 and not fb.use_spec()


def test_engine_falls_back_from_a_slow_verifier(tiny, monkeypatch):
    """Through the engine: a verifier made slow (a sleep) is measured and dropped; greedy output
    stays plain decoding's."""
    import time

    from llmlab.infer import engine as engine_mod
    real = engine_mod.verify_step
    monkeypatch.setattr(engine_mod, "verify_step", lambda *a: time.sleep(0.03) or real(*a))
    prompts, p = _copy_prompts(1), SamplingParams(max_new_tokens=60, ignore_eos=True)
    ref = Engine(tiny, None, num_blocks=128).generate(prompts, p)
    eng = Engine(tiny, None, num_blocks=128, speculative="ngram")
    eng.fallback.min_probe = 4
    assert eng.generate(prompts, p) == ref
    assert eng.fallback.decided is False and not eng.fallback.use_spec()


def test_serve_config_takes_speculative_and_refuses_a_missing_draft(tiny):
    from llmlab.config import load_config
    from llmlab.serve.commands import ServeConfig
    cfg = load_config(ServeConfig, ["speculative=ngram", "num_speculative_tokens=3"])
    assert cfg.engine.speculative == "ngram" and cfg.engine.num_speculative_tokens == 3
    eng = cfg.engine.build(tiny, None)
    assert eng.spec_k == 3 and eng.draft is None
    with pytest.raises(UserError, match="num_speculative_tokens"):
        load_config(ServeConfig, ["num_speculative_tokens=0"])
    bad = load_config(ServeConfig, ["speculative=/no/such/draft"])
    with pytest.raises(UserError):
        bad.engine.build(tiny, None)


@pytest.mark.slow
def test_greedy_speculation_equals_plain_decoding_smollm2(smollm2, smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = ("The river rises in the northern hills, runs south through three market towns and reaches "
            "the sea at a wide estuary where the old harbour still stands.")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Repeat exactly:\n\n" + text}]))
    p = SamplingParams(max_new_tokens=40, ignore_eos=True)
    for row_pad in (1, 8):  # `llmlab chat`'s one-user setting and the server's
        plain = Engine(smollm2, tok, num_blocks=32, row_pad=row_pad).generate([ids], p)
        eng = Engine(smollm2, tok, num_blocks=32, row_pad=row_pad, speculative="ngram", speculative_fallback=False)
        assert eng.generate([ids], p) == plain
        assert eng.spec_summary()["mean_accepted"] > 1  # the copy is drafted and accepted
