"""Feature KD (hidden states, attention transfer), data-free KD, tail-aware top-k KD and the
teacher cache, each against a hand computation or the model's own forward."""
import torch
import torch.nn.functional as F

from llmlab.compress import feature_kd as fk
from llmlab.compress.kd import kd_loss, topk_kd_loss
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def tiny(layers=2, heads=2, kv=None, d=32, vocab=61, seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                num_key_value_heads=kv or heads, intermediate_size=64, max_position_embeddings=64))
    return m.eval()


def test_tail_topk_kd_is_the_exact_kl_over_k_plus_one_outcomes():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 23, generator=g) * 2, torch.randn(2, 4, 23, generator=g) * 3
    for T in (1.0, 2.0):
        lse = (t / T).logsumexp(-1)
        v, i = t.topk(23, -1)
        assert torch.allclose(topk_kd_loss(s, v, i, T, None, lse), kd_loss(s, t, T), atol=1e-5)
        v, i = t.topk(5, -1)  # hand computation: top-5 probabilities plus one tail bucket
        p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
        P = torch.cat([p.gather(-1, i), 1 - p.gather(-1, i).sum(-1, keepdim=True)], -1)
        Q = torch.cat([q.gather(-1, i), 1 - q.gather(-1, i).sum(-1, keepdim=True)], -1)
        ref = T * T * (P * (P.log() - Q.log())).sum(-1).mean()
        assert torch.allclose(topk_kd_loss(s, v, i, T, None, lse), ref, atol=1e-5)


def test_truncated_topk_pushes_a_perfect_student_away_and_tail_aware_does_not():
    t = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    v, i = t.topk(4, -1)
    grads = []
    for lse in (None, (t / 2).logsumexp(-1)):
        s = t.clone().requires_grad_()  # the student already equals the teacher
        topk_kd_loss(s, v, i, 2.0, None, lse).backward()
        grads.append(s.grad.abs().max().item())
    assert grads[0] > 1e-2 and grads[1] < 1e-5


def test_layer_map_pairs_last_with_last():
    assert fk.layer_map(2, 2) == [0, 1]
    m = fk.layer_map(4, 30)
    assert m[-1] == 29 and m == sorted(m) and len(set(m)) == 4


def test_hidden_kd_loss_is_relative_mse():
    h_t = torch.randn(2, 5, 8)
    assert float(fk.hidden_kd_loss(h_t, h_t)) == 0.0
    assert abs(float(fk.hidden_kd_loss(torch.zeros(2, 5, 8), h_t)) - 1.0) < 1e-6
    proj = torch.nn.Linear(3, 8, bias=False)
    h_s = torch.randn(2, 5, 3)
    ref = ((proj(h_s) - h_t) ** 2).sum() / (h_t ** 2).sum()
    assert torch.allclose(fk.hidden_kd_loss(h_s, h_t, proj), ref, atol=1e-6)


def test_attention_probs_reproduce_the_attention_output():
    # one head: y = o_proj(A v) must equal the module's own (SDPA) forward
    m = tiny(layers=1, heads=1)
    x = torch.randn(2, 7, 32)
    attn = m.model.layers[0].self_attn
    rope = m.rope(torch.arange(7), x.dtype)
    with torch.no_grad():
        a = fk.attention_probs(attn, x, rope)
    assert torch.allclose(a.sum(-1), torch.ones(2, 7)) and float(a.triu(1).abs().max()) == 0.0
    v = attn.v_proj(x)
    with torch.no_grad():
        assert torch.allclose(attn.o_proj(a @ v), attn(x, rope), atol=1e-5)


def test_attention_kd_loss_hand_and_kl_div():
    a_t = torch.softmax(torch.randn(2, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), -1e9), -1)
    a_s = torch.softmax(torch.randn(2, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), -1e9), -1)
    assert float(fk.attention_kd_loss(a_t, a_t)) < 1e-7
    ref = F.kl_div(a_s.clamp_min(1e-12).log(), a_t, reduction="none").sum(-1).mean()
    assert torch.allclose(fk.attention_kd_loss(a_s, a_t), ref, atol=1e-6)


def test_capture_records_block_outputs_and_maps():
    m = tiny()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad(), fk.capture(m, [0, 1], attention=True) as (hid, att):
        logits = m(ids)
    assert torch.allclose(m.lm_head(m.model.norm(hid[1])), logits, atol=1e-5)
    assert att[1].shape == (2, 9, 9) and torch.allclose(att[1].sum(-1), torch.ones(2, 9))
    with torch.no_grad():
        m(ids)
    assert not m.model.layers[0]._forward_hooks  # hooks removed on exit


def test_feature_kd_step_lowers_the_feature_loss():
    teacher, student = tiny(layers=4, d=48, heads=3, seed=1), tiny(layers=2, d=32, seed=2).train()
    ids = torch.randint(0, 61, (4, 12))
    feats = fk.FeatureKD(2, 4, 32, 48)
    with torch.no_grad(), fk.capture(teacher, feats.teacher_layers, attention=True) as (t_hid, t_att):
        teacher(ids)
    t_hid, t_att = [t_hid[j] for j in feats.teacher_layers], t_att[3]
    opt = torch.optim.Adam(list(student.parameters()) + list(feats.parameters()), lr=3e-3)
    losses = []
    for _ in range(30):
        with fk.capture(student, [0, 1], attention=True) as (hid, att):
            student(ids)
        loss = feats.loss(hid, att, t_hid, t_att, 1.0, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_data_free_synthesis_is_the_teachers_own_decoding():
    from llmlab.compress.data_free import synthesize
    m = tiny()
    out = synthesize(m, 3, 6, seed=0, batch_size=2, temperature=0.0, exclude=(0, 1))
    assert out.shape == (3, 6) and not set(out[:, 0].tolist()) & {0, 1}
    ids = out[:, :1]  # greedy reference without a KV cache
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    a, b = synthesize(m, 3, 6, seed=4), synthesize(m, 3, 6, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, synthesize(m, 3, 6, seed=5))


def test_sequence_level_kd_windows_keep_the_real_prefix_and_the_teachers_continuation():
    import pytest

    from llmlab.compress.data_free import continue_windows
    from llmlab.errors import UserError
    m = tiny()
    real = torch.randint(2, 61, (5, 9), generator=torch.Generator().manual_seed(0))
    out = continue_windows(m, real[:, :4], 9, torch.Generator().manual_seed(0), batch_size=2, temperature=0.0)
    assert out.shape == (5, 9) and torch.equal(out[:, :4], real[:, :4])
    ids = real[:, :4]  # greedy reference without a KV cache
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    sample = lambda seed: continue_windows(m, real[:, :4], 9, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), sample(4))
    with pytest.raises(UserError):
        continue_windows(m, real, 9, torch.Generator())  # no room left to generate


def test_seq_kd_settings_are_checked():
    import pytest

    from llmlab.compress.distill import DistillConfig, _check
    from llmlab.errors import UserError
    _check(DistillConfig(seq_kd=True, alpha=0.0, seeds=[0, 1], teacher_topk=0))  # CE on teacher text only: fine
    with pytest.raises(UserError, match="alpha > 0"):
        _check(DistillConfig(alpha=0.0, seeds=[0, 1]))  # without seq_kd the two arms would be the same
    for bad in (dict(seq_kd_prompt=128), dict(seq_kd_prompt=0), dict(data_free=True), dict(seq_kd_temperature=-1)):
        with pytest.raises(UserError, match="seq_kd needs"):
            _check(DistillConfig(seq_kd=True, **bad))
    with pytest.raises(UserError, match="teacher_topk"):
        _check(DistillConfig(seq_kd=True, alpha=0.3, teacher_topk=0))


def test_teacher_cache_is_reused_only_for_the_same_windows(tmp_path):
    from llmlab.compress.distill import cached_teacher
    path, calls = str(tmp_path / "t.safetensors"), []

    def compute():
        calls.append(1)
        return {"top_v": torch.ones(2, 3), "hid": torch.zeros(2, 5)}
    w, need = torch.arange(8).view(2, 4), {"top_v", "hid"}
    cached_teacher(path, "k", need, w, compute)
    out = cached_teacher(path, "k", {"top_v"}, w, compute)  # a subset of what the file holds
    assert len(calls) == 1 and list(out) == ["top_v"] and torch.equal(out["top_v"], torch.ones(2, 3))
    assert torch.equal(cached_teacher(path, "k", need, w[:1], compute)["top_v"], torch.ones(1, 3))  # a prefix
    cached_teacher(path, "k", {"top_v", "att"}, w, compute)  # the file lacks "att"
    cached_teacher(path, "k", need, w + 1, compute)
    cached_teacher(path, "other", need, w + 1, compute)
    assert len(calls) == 4 and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
