"""Training tricks (llmlab.train.tricks) against hand computations, and wired into `train`."""
from __future__ import annotations

import math

import pytest
import torch

from llmlab.checkpoint import load_tensors
from llmlab.model import ModelConfig, Transformer
from llmlab.train import TokenArrayLoader, TrainConfig, train
from llmlab.train import tricks

TOKENS = torch.tensor(list((b"Tyger Tyger, burning bright, In the forests of the night; " * 80)))


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=64, **kw))


def test_rampup_accumulation_is_linear_then_full():
    got = [tricks.rampup_accumulation(s, 8, 2, 6) for s in range(9)]
    assert got == [2, 3, 4, 5, 6, 7, 8, 8, 8]  # 2 + 6 s // 6
    assert tricks.rampup_accumulation(0, 8, 0, 6) == 8  # off


def test_early_stopping_stops_patience_evals_after_the_best():
    es = tricks.EarlyStopping(patience=2)
    losses = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.0]
    stops = []
    for i, v in enumerate(losses):
        stops.append(es.update(i, v))
        if stops[-1]:
            break
    assert stops.index(True) == 5 and es.best_step == 3 and es.best == 1.5
    es2 = tricks.EarlyStopping(patience=1, threshold=0.6)  # a gain under the threshold does not count
    assert [es2.update(i, v) for i, v in enumerate([3.0, 2.5])] == [False, True]


def _std_of(m, suffix):
    return torch.cat([p.flatten() for n, p in m.named_parameters() if n.endswith(suffix)]).std().item()


def test_init_schemes_match_their_formulas():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=384, max_position_embeddings=32))
    d, f, hd = 128, 384, 32
    tricks.init_weights(m, "xavier_uniform", seed=0)
    w = m.model.layers[0].mlp.up_proj.weight  # (f, d)
    bound = math.sqrt(6 / (d + f))
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    tricks.init_weights(m, "xavier_normal", seed=0)
    assert _std_of(m, "mlp.up_proj.weight") == pytest.approx(math.sqrt(2 / (d + f)), rel=0.03)
    tricks.init_weights(m, "t5", seed=0)
    assert _std_of(m, "q_proj.weight") == pytest.approx((d * hd) ** -0.5, rel=0.03)
    assert _std_of(m, "k_proj.weight") == pytest.approx(d ** -0.5, rel=0.03)
    assert _std_of(m, "down_proj.weight") == pytest.approx(f ** -0.5, rel=0.03)
    assert _std_of(m, "embed_tokens.weight") == pytest.approx(1.0, rel=0.03)
    tricks.init_weights(m, "small", seed=0)
    assert _std_of(m, "o_proj.weight") == pytest.approx(math.sqrt(2 / (5 * d)), rel=0.03)
    with pytest.raises(ValueError):
        tricks.init_weights(m, "he")


def test_embedding_grad_shrink_scales_the_gradient_only():
    x = torch.randint(0, 256, (2, 16))
    a, b = tiny(), tiny()
    handles = tricks.shrink_embedding_grad(b, 0.1)
    la, lb = a.loss(x, x), b.loss(x, x)
    assert torch.equal(la, lb)  # forward unchanged
    la.backward()
    lb.backward()
    ga, gb = a.model.embed_tokens.weight.grad, b.model.embed_tokens.weight.grad
    # tied lm_head adds its own (unshrunk) gradient to the same matrix: compare the embedding path only
    a2, b2 = tiny(tie_word_embeddings=False), tiny(tie_word_embeddings=False)
    tricks.shrink_embedding_grad(b2, 0.1)
    a2.loss(x, x).backward()
    b2.loss(x, x).backward()
    assert torch.allclose(b2.model.embed_tokens.weight.grad, 0.1 * a2.model.embed_tokens.weight.grad, atol=1e-7)
    assert torch.allclose(b2.lm_head.weight.grad, a2.lm_head.weight.grad, atol=1e-7)
    assert not torch.allclose(ga, gb)
    for h in handles:
        h.remove()


@pytest.mark.parametrize("impl,at_most", [("eager", 0.85), ("sdpa", 0.95)])
def test_selective_recompute_same_grads_less_saved_memory(impl, at_most):
    x = torch.randint(0, 256, (4, 64))
    a, b = tiny(attn_implementation=impl), tiny(attn_implementation=impl)
    names = [n for n, _ in b.named_parameters()]
    assert tricks.selective_recompute(b) == 2
    assert [n for n, _ in b.named_parameters()] == names  # checkpoints unaffected
    saved_a = tricks.saved_activation_bytes(lambda: a.loss(x, x).backward())
    saved_b = tricks.saved_activation_bytes(lambda: b.loss(x, x).backward())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n
    assert saved_b < at_most * saved_a  # eager keeps the T x T scores: recomputing them pays most


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, max_length=32, per_device_train_batch_size=2,
                learning_rate=1e-2, logging_steps=1, disable_tqdm=True, report_to=["jsonl"], peak_flops=1e9,
                spike_guard="off")
    return TrainConfig(**{**base, **kw})


def test_train_with_tricks_ramps_and_stops_early_keeping_the_best(tmp_path):
    m = tiny()
    tl = TokenArrayLoader(TOKENS[:3000], 32, 2)
    vl = TokenArrayLoader(TOKENS[3000:], 32, 2, loop=False)
    # threshold 100: no evaluation after the first counts as a gain -> stop at eval 3 (step 3), keep step 1
    res = train(_cfg(tmp_path, optim="adafactor", weight_init="small", embedding_grad_shrink=0.1, selective_recompute=True,
                     gradient_accumulation_steps=4, batch_size_rampup_start=1, batch_size_rampup_steps=3,
                     eval_steps=1, save_steps=1, save_total_limit=0, early_stopping_patience=2,
                     early_stopping_threshold=100.0), m, tl, vl)
    assert res.step == 3
    assert res.tokens == (1 + 2 + 3) * 2 * 32  # ramp 1, 2, 3 micro-batches of 2 x 32 tokens
    best = load_tensors(tmp_path / "checkpoint-1" / "model" / "model.safetensors")
    final = load_tensors(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in final)
    last = load_tensors(tmp_path / "checkpoint-3" / "model" / "model.safetensors")
    assert not all(torch.equal(last[k], final[k]) for k in final)
