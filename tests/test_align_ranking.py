"""RRHF, PRO and Chain of Hindsight: the losses against hand computations and the papers' formulas,
and the ranking trainer on a tiny random model."""
from __future__ import annotations

import math
import random

import pytest
import torch

from llmlab.align.preference_trainer import PreferenceConfig, logprob_preference_accuracy
from llmlab.align.ranking_losses import pro_loss, rrhf_loss
from llmlab.align.ranking_trainer import GOOD, RankingTrainer, conditioned_accuracy, encode_segments, hindsight_segments
from llmlab.align.rm_losses import plackett_luce_loss
from llmlab.align.toy import CharTokenizer
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer
from test_align_cli import last_json, tiny_dir  # noqa: F401  (the tiny HF-style model dir fixture)

TOK = CharTokenizer()
P = torch.tensor([[-1.0, -0.5, -2.0]])
R = torch.tensor([[2.0, 1.0, 0.0]])


def tiny(tok=TOK, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_rrhf_hand():
    # pairs with r_i < r_j: (1, 0): max(0, -0.5 + 1) = 0.5; (2, 0): 0; (2, 1): 0 -> rank 0.5, + NLL 1.0
    loss, st = rrhf_loss(P, R, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(1.5) and st["rank_loss"].item() == pytest.approx(0.5)
    assert rrhf_loss(P, R, torch.tensor([1.0]), rank_weight=2.0)[0].item() == pytest.approx(2.0)
    # equal rewards are not ranked; a padded slot takes no part
    assert rrhf_loss(P, torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([0.0]))[0].item() == 0.0
    pad = rrhf_loss(torch.tensor([[-1.0, -0.5, 9.0]]), R, torch.tensor([0.0]), torch.tensor([[True, True, False]]))[0]
    assert pad.item() == pytest.approx(0.5)
    p = P.clone().requires_grad_(True)
    rrhf_loss(p, R, torch.tensor([0.0]))[0].sum().backward()
    assert p.grad.tolist() == [[-1.0, 1.0, 0.0]]


def test_pro_hand():
    # k = 1: 1/T = r_1 - r_i = (1, 2), 1/T_1^1 = max = 2 -> logits (-2, -0.5, -4); k = 2: (-0.5, -2)
    t1 = -2 - math.log(math.exp(-2) + math.exp(-0.5) + math.exp(-4))
    t2 = -0.5 - math.log(math.exp(-0.5) + math.exp(-2))
    loss, st = pro_loss(P, R, torch.tensor([1.0]), beta=0.5)
    assert st["rank_loss"].item() == pytest.approx(-(t1 + t2), rel=1e-6)
    assert loss.item() == pytest.approx(-(t1 + t2) + 0.5, rel=1e-6)
    perm = [2, 0, 1]  # order of the columns does not matter: PRO sorts by reward
    assert pro_loss(P[:, perm], R[:, perm], torch.tensor([1.0]), beta=0.5)[0].item() == pytest.approx(loss.item())
    # without the reward-gap temperatures PRO's ranking term is the Plackett-Luce NLL of the ranking
    plain = pro_loss(P, R, torch.tensor([0.0]), beta=0.0, temperature=False)[0]
    assert plain.item() == pytest.approx(plackett_luce_loss(P).item(), rel=1e-6)
    # padding: a ranking of two padded to three equals the unpadded one, with finite gradients
    p = torch.tensor([[-1.0, -0.5, 0.0]], requires_grad=True)
    padded = pro_loss(p, R, torch.tensor([0.0]), torch.tensor([[True, True, False]]))[0]
    assert padded.item() == pytest.approx(pro_loss(P[:, :2], R[:, :2], torch.tensor([0.0]))[0].item())
    padded.sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad[0, 2] == 0


def rank_rows(n, seed, k=3):
    rng, out = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        wrong = rng.sample([x for x in range(10) if x != a + b], k - 1)
        comps = [str(a + b)] + [str(w) for w in wrong]
        out.append({"prompt": f"{a}+{b}=", "completions": comps,
                    "rewards": [1.0] + [1 / (2 + abs(w - a - b)) for w in wrong]})
    return out


@pytest.mark.parametrize("loss_type", ["rrhf", "pro"])
def test_ranking_trainer_learns(loss_type):
    pol, rows = tiny(), rank_rows(32, 0)
    held = [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][-1]} for r in rank_rows(32, 1)]
    before = logprob_preference_accuracy(pol, TOK, held)
    cfg = PreferenceConfig(loss_type=loss_type, beta=1.0, learning_rate=3e-3, num_train_epochs=10,
                           per_device_train_batch_size=8)
    tr = RankingTrainer(pol, None, TOK, rows, cfg)
    logs = tr.train()
    assert all(math.isfinite(r["loss"]) for r in logs)
    assert sum(r["loss"] for r in logs[-3:]) < sum(r["loss"] for r in logs[:3])
    assert logprob_preference_accuracy(pol, TOK, held) > max(before, 0.75)


def test_coh_segments_and_loss():
    tok = CharTokenizer("0123456789+= Aabdgnoswer:\n")
    row = {"prompt": "1+2=", "chosen": "3", "rejected": "4"}
    segs = hindsight_segments(row, good_first=True)
    assert "".join(t for t, _ in segs) == "A good answer: 3\nA bad answer: 4"
    ids, mask = encode_segments(tok, segs)
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == tok.encode("3") + tok.encode("4") + [tok.eos_id]
    pol = tiny(tok)
    tr = RankingTrainer(pol, None, tok, [row], PreferenceConfig(loss_type="coh", per_device_train_batch_size=2))
    assert len(tr.items) == 2  # both orders
    loss, _ = tr.loss([0])
    with torch.no_grad():  # hand: mean NLL of the trained tokens from one full forward
        full = torch.tensor([tok.encode("1+2=") + ids])
        logp = pol(full).float().log_softmax(-1)[0, :-1].gather(-1, full[0, 1:, None])[:, 0]
        m = torch.tensor([0] * 3 + mask, dtype=torch.float)
        want = -(logp * m).sum() / m.sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(UserError):
        RankingTrainer(pol, None, tok, [{"prompt": "1+2=", "completions": ["3", "4"]}],
                       PreferenceConfig(loss_type="coh"))


def test_coh_learns_to_condition():
    tok = CharTokenizer("0123456789+= Aabdgnoswer:\n")
    rows = [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][1]}
            for r in rank_rows(32, 0, 2)]
    held = [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][1]}
            for r in rank_rows(32, 1, 2)]
    pol = tiny(tok)
    before = conditioned_accuracy(pol, tok, held, GOOD)
    RankingTrainer(pol, None, tok, rows, PreferenceConfig(loss_type="coh", learning_rate=3e-3, num_train_epochs=20,
                                                           per_device_train_batch_size=8)).train()
    good, bad = conditioned_accuracy(pol, tok, held, GOOD), conditioned_accuracy(pol, tok, held, "A bad answer:")
    assert good > max(before, 0.75) and bad < good - 0.2


@pytest.mark.slow  # three CLI runs, each loading a model: ~13 s on one loaded core
def test_cli_dpo_verb_trains_rrhf_pro_coh(request, tmp_path, capsys):
    from llmlab.cli import main
    m = f"model={request.getfixturevalue('tiny_dir')}"
    for loss, data in (("rrhf", "arithmetic_ranked"), ("pro", "arithmetic_ranked"), ("coh", "arithmetic")):
        assert main(["dpo", m, f"loss_type={loss}", f"data={data}", "num_rows=4", "eval_rows=4",
                     f"output_dir={tmp_path / loss}"]) == 0
        out = last_json(capsys)
        assert out["verb"] == loss and out["steps"] == (1 if loss != "coh" else 2)
        assert 0 <= out["heldout_logprob_accuracy_after"] <= 1
