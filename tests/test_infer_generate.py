"""The one decoding loop (llmlab/infer/generate.py) against hand-written references: full forwards
without a cache, log-softmax by hand, and each caller against the loop it now delegates to."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.infer.generate import generate_batch, generate_ids, generate_with_forward
from llmlab.infer.sampling import SamplingParams
from llmlab.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=40)
    return Transformer(cfg).eval()


PROMPTS = [[5, 9, 2, 7, 11], [3], [8, 8, 1]]


@torch.no_grad()
def naive_greedy(model, prompt, n, stop=()):
    """Full forward over the whole sequence every step (no cache, no padding): the reference."""
    ids, out = list(prompt), []
    for _ in range(n):
        t = int(model(torch.tensor([ids]))[0, -1].argmax())
        out.append(t)
        ids.append(t)
        if t in stop:
            break
    return out


def test_greedy_batch_matches_full_forwards_and_logprobs(model):
    b = generate_batch(model, PROMPTS, SamplingParams(max_new_tokens=6), logprobs=True)
    for i, p in enumerate(PROMPTS):
        want = naive_greedy(model, p, 6)
        assert b.completions()[i] == want
        with torch.no_grad():
            lp = model(torch.tensor([p + want])).log_softmax(-1)[0, len(p) - 1:-1]
        ref = lp.gather(-1, torch.tensor(want).unsqueeze(1)).squeeze(1)
        assert torch.allclose(b.logprobs[i], ref, atol=1e-5)
    assert b.ids.shape == (3, 5 + 6) and b.attention_mask[1].tolist() == [0] * 4 + [1] * 7


def test_batch_1_streaming_path_agrees(model):
    for p in PROMPTS:
        assert list(generate_ids(model, p, SamplingParams(max_new_tokens=6))) == naive_greedy(model, p, 6)


def test_a_callers_forward_runs_the_same_loop(model):
    """generate_with_forward over an uncached whole-sequence forward (as the LLaVA model runs)
    gives the reference's greedy ids, each row ending before its stop token."""
    seqs = [list(p) for p in PROMPTS]

    @torch.no_grad()
    def forward(fed):
        for s, t in zip(seqs, fed or ()):
            s.append(t)
        return torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])

    stop = naive_greedy(model, PROMPTS[1], 1)[0]  # row 1 stops at once, the others run to the budget
    got = generate_with_forward(forward, [list(p) for p in PROMPTS], SamplingParams(max_new_tokens=6),
                                stop_ids=[stop])
    for p, g in zip(PROMPTS, got):
        want = naive_greedy(model, p, 6, stop=(stop,))
        assert g == (want[:-1] if want[-1] == stop else want)
    assert got[1] == [] and len(got[0]) == 6


def test_stop_token_is_masked_in_and_dropped_from_text(model):
    greedy = [naive_greedy(model, p, 4) for p in PROMPTS]
    stop = greedy[0][0]  # row 0 stops at once; a row that never meets it runs to the budget
    other = next(i for i in (1, 2) if stop not in greedy[i])
    b = generate_batch(model, [PROMPTS[0], PROMPTS[other]], SamplingParams(max_new_tokens=4), stop_ids=[stop],
                       pad_id=0)
    assert b.completions() == [[stop], greedy[other]] and b.stopped == [True, False]
    assert b.completions(keep_stop=False) == [[], greedy[other]]
    assert b.completion_mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    assert b.completion_ids[0, 1:].tolist() == [0, 0, 0]  # padding after the stop
    # the batch-1 path does not yield the stop token
    assert list(generate_ids(model, PROMPTS[0], SamplingParams(max_new_tokens=4), {stop})) == []


def test_logits_processor_constrains_every_row_and_sees_its_history(model):
    allowed = {4, 6}
    seen = []

    def only(generated, logits):
        seen.append(len(generated))
        out = torch.full_like(logits, float("-inf"))
        out[list(allowed)] = logits[list(allowed)]
        return out

    g = torch.Generator().manual_seed(1)
    b = generate_batch(model, PROMPTS, SamplingParams(max_new_tokens=5, temperature=1.0, top_p=0.9),
                       generator=g, logits_processors=[only, None, only])
    assert set(b.completions()[0]) <= allowed and set(b.completions()[2]) <= allowed
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # rows 0 and 2, each step, after k tokens
    ids = list(generate_ids(model, PROMPTS[1], SamplingParams(max_new_tokens=5), logits_processor=only))
    assert set(ids) <= allowed and len(ids) == 5


def test_seeded_sampling_is_reproducible_and_on_step_sees_every_step(model):
    params = SamplingParams(max_new_tokens=6, temperature=0.8, top_k=10)
    calls = []

    def on_step(step, logits, fed, alive):
        calls.append((step, fed is None, logits.shape, len(alive)))

    a = generate_batch(model, PROMPTS, params, generator=torch.Generator().manual_seed(3), on_step=on_step)
    b = generate_batch(model, PROMPTS, params, generator=torch.Generator().manual_seed(3))
    assert a.completions() == b.completions()
    assert [c[0] for c in calls] == list(range(6)) and calls[0][1] and not calls[1][1]
    assert calls[0][2] == (3, 53) and calls[0][3] == 3


def test_penalties_apply_per_row(model):
    """repetition_penalty in the batch equals the batch-1 path's per-row penalties."""
    p = SamplingParams(max_new_tokens=6, repetition_penalty=1.5, no_repeat_ngram_size=2)
    b = generate_batch(model, PROMPTS, p)
    for i, prompt in enumerate(PROMPTS):
        assert b.completions()[i] == list(generate_ids(model, prompt, p))


def test_bad_input(model):
    with pytest.raises(UserError):
        generate_batch(model, [[1], []], SamplingParams())
    with pytest.raises(UserError, match="no room"):
        generate_batch(model, [list(range(1, 41))], SamplingParams(max_new_tokens=2))
    with pytest.raises(UserError, match="context window"):
        next(generate_ids(model, list(range(1, 41)), SamplingParams()))


def test_callers_are_the_one_loop(model):
    """SFT eval, generative eval and RL rollouts give what generate_batch gives."""
    from llmlab.align.rollout import sample
    from llmlab.finetune.sft_eval import greedy_batch

    want = generate_batch(model, PROMPTS, SamplingParams(max_new_tokens=5), stop_ids=[7], pad_id=0)
    assert greedy_batch(model, PROMPTS, 5, {7}) == want.completions(keep_stop=False)
    ro = sample(model, PROMPTS, 5, 7, 0, temperature=0)
    assert ro.completions() == want.completions()
    assert [naive_greedy(model, p, 5, stop=(7,)) for p in PROMPTS] == want.completions()
