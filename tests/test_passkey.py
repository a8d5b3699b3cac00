"""Passkey generator and scoring (llmlab/eval/passkey.py), the passkey training mix, the long-context
helpers, and dynamic NTK's original length (llmlab/model/rope.py)."""
from __future__ import annotations

import random

import pytest
import torch

from llmlab.errors import UserError
from llmlab.eval.passkey import FILLER, INTRO, NEEDLE, QUESTION, PasskeyTask, accuracy_grid, retrieved


class CharTok:
    """One token per character: lets the tests read positions straight off the text."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_example_layout_exact_length_and_depth():
    tok, task = CharTok(), PasskeyTask(CharTok())
    for length, depth in [(400, 0.0), (400, 0.5), (531, 1.0), (1000, 0.3)]:
        e = task.make(length, depth, random.Random(7))
        text = tok.decode(e.ids)
        assert len(e.ids) == length and len(e.key) == 5 and e.key.isdigit()
        needle = NEEDLE.format(key=e.key)
        n_fill = length - len(INTRO) - len(needle) - len(QUESTION) - len(" " + e.key)
        before = round(depth * n_fill)
        assert text.startswith(INTRO)
        assert text[len(INTRO) + before:].startswith(needle) and e.needle_at == len(INTRO) + before
        assert text.endswith(QUESTION + " " + e.key) and tok.decode(e.ids[e.answer_start:]) == " " + e.key
        filler = text[len(INTRO):len(INTRO) + before] + text[len(INTRO) + before + len(needle):-len(QUESTION + " " + e.key)]
        assert filler == ((" " + FILLER) * 50)[:n_fill]  # the filler runs on across the needle


def test_keys_are_seeded_and_bad_input_is_one_line():
    task = PasskeyTask(CharTok())
    a = [task.make(300, 0.5, random.Random(1)).key for _ in range(3)]
    assert a == [task.make(300, 0.5, random.Random(1)).key for _ in range(3)]
    keys = {e.key for e in task.batch(50, 300, random.Random(2))}
    assert len(keys) > 40
    with pytest.raises(UserError, match="too short"):
        task.make(task.min_length() - 1, 0.5, random.Random(0))
    task.make(task.min_length(), 0.5, random.Random(0))
    with pytest.raises(UserError, match="depth"):
        task.make(300, 1.5, random.Random(0))


class Oracle(torch.nn.Module):
    """Predicts the true next token of the sequences it was given, except `wrong` positions (from the end)."""

    def __init__(self, seqs, vocab=256, wrong=()):
        super().__init__()
        self.seqs, self.vocab, self.wrong = seqs, vocab, wrong

    def forward(self, x):
        out = torch.zeros(*x.shape, self.vocab)
        for b in range(x.shape[0]):
            full = next(s for s in self.seqs if s[:x.shape[1]] == x[b].tolist())
            nxt = list(full[1:x.shape[1] + 1])
            for w in self.wrong:
                nxt[-w] = (nxt[-w] + 1) % self.vocab
            out[b, torch.arange(x.shape[1]), torch.tensor(nxt)] = 1.0
        return out


def test_scoring_counts_only_exact_keys():
    task = PasskeyTask(CharTok())
    ex = task.batch(6, 320, random.Random(3))
    seqs = [e.ids for e in ex]
    assert retrieved(Oracle(seqs), ex, batch_size=4) == [True] * 6
    assert retrieved(Oracle(seqs, wrong=(1,)), ex) == [False] * 6  # last digit wrong
    assert retrieved(Oracle(seqs, wrong=(6,)), ex) == [False] * 6  # the space before the key wrong
    assert retrieved(Oracle(seqs, wrong=(7,)), ex) == [True] * 6  # a question token: not scored


def test_accuracy_grid_shape_and_values():
    task = PasskeyTask(CharTok())
    lengths, depths = [300, 400], [0.0, 0.5, 1.0]

    class Blind(torch.nn.Module):  # always predicts "0": retrieves nothing
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full(x.shape, ord("0")), 256).float()
    grid = accuracy_grid(Blind(), task, lengths, depths, per_cell=3)
    assert grid == [[0.0] * 3] * 2
    rng_ex = []
    for length in lengths:  # the grid's own examples, rebuilt, through an oracle: all retrieved
        for j, d in enumerate(depths):
            r = random.Random(f"0-{length}-{j}")
            rng_ex += [task.make(length, d, r).ids for _ in range(3)]
    assert accuracy_grid(Oracle(rng_ex), task, lengths, depths, per_cell=3) == [[1.0] * 3] * 2


def test_passkey_mix_loader_replaces_rows_and_resumes():
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.train.loader import TokenArrayLoader

    task = PasskeyTask(CharTok())
    text = torch.randint(0, 50, (20_000,), generator=torch.Generator().manual_seed(0))  # < 50: no passkey char
    loader = PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, seed=1)
    it = iter(loader)
    x, y = next(it)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert (x[:2] >= 50).any(1).all() and (x[2:] < 50).all()  # 2 of 4 rows are passkeys
    assert CharTok().decode(y[0].tolist()).endswith(QUESTION[1:] + " " + CharTok().decode(y[0, -5:].tolist()))
    state = loader.state_dict()
    x2, _ = next(it)
    again = PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, seed=1)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))[0], x2)
    with pytest.raises(UserError):
        PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.8, copy_fraction=0.5)
    mixed = PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.25, copy_fraction=0.5)
    x, y = next(iter(mixed))
    w = torch.cat([x, y[:, -1:]], 1)  # rows 1-2 repeat their first half (150 tokens of 301)
    assert torch.equal(w[1:3, 150:300], w[1:3, :150]) and torch.equal(w[1:3, 300], w[1:3, 0])
    assert not torch.equal(w[3, 150:300], w[3, :150])  # the text row is left alone


def test_dynamic_ntk_original_length_matches_hf_reading():
    """rope_scaling.original_max_position_embeddings = L with a longer table gives the frequencies that
    max_position_embeddings = L (HF's reading) gives, at every sequence length."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.rope import rope_inv_freq
    hf = ModelConfig(vocab_size=10, hidden_size=64, num_attention_heads=2, max_position_embeddings=32,
                     rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    ours = ModelConfig(vocab_size=10, hidden_size=64, num_attention_heads=2, max_position_embeddings=256,
                       rope_scaling={"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 32})
    for n in (16, 32, 64, 200):
        assert torch.allclose(rope_inv_freq(hf, n)[0], rope_inv_freq(ours, n)[0])
    r = 32  # hand check at n = 64: theta' = theta * (4 * 64 / 32 - 3) ** (r / (r - 2))
    theta = 10000 * 5 ** (r / (r - 2))
    assert torch.allclose(rope_inv_freq(ours, 64)[0], 1 / theta ** (torch.arange(0, r, 2).double() / r))


def test_rescale_keeps_weights_and_loss_by_position():
    from llmlab.ablate.longctx import loss_by_position, rescale
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   max_position_embeddings=16)).eval()
    x = torch.randint(0, 40, (2, 17))
    same = rescale(base, "none", 4.0, 16, 64)
    with torch.no_grad():
        assert torch.allclose(same(x[:, :16]), base(x[:, :16]), atol=1e-6)
        ref = torch.nn.functional.cross_entropy(base(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none").mean(0)
    assert torch.allclose(loss_by_position(base, x), ref, atol=1e-6)
    pi = rescale(base, "linear", 4.0, 16, 64)
    assert pi(torch.randint(0, 40, (1, 64))).shape == (1, 64, 40)  # 4x the trained context is accepted
    yarn = rescale(base, "yarn", 4.0, 16, 64)
    assert yarn.config.rope_scaling["original_max_position_embeddings"] == 16


def test_longctx_yarn_options_reach_the_rope_tables():
    """yarn_attention_factor / yarn_beta_*: the defaults leave the config as before; 1.0 drops the
    temperature; beta_slow 12 at T = 128 (head 32) ends the ramp at index 1: index 0 keeps its
    frequency (HF's ramp starts at index >= 0, so index 0 is never interpolated), 1-15 are PI's."""
    from llmlab.ablate.longctx import LongCtxConfig, rescale, yarn_options
    from llmlab.model.config import ModelConfig
    from llmlab.model.rope import rope_inv_freq
    from llmlab.model.transformer import Transformer
    assert yarn_options(LongCtxConfig()) == {}
    cold = LongCtxConfig(yarn_attention_factor=1.0)
    assert yarn_options(cold) == {"attention_factor": 1.0}
    base = Transformer(ModelConfig(vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   max_position_embeddings=128)).eval()
    default = rope_inv_freq(rescale(base, "yarn", 4.0, 128, 512, yarn_options(LongCtxConfig())).config)
    no_temp = rope_inv_freq(rescale(base, "yarn", 4.0, 128, 512, yarn_options(cold)).config)
    assert torch.equal(default[0], no_temp[0]) and no_temp[1] == 1.0 and default[1] > 1.1
    narrow = yarn_options(LongCtxConfig(yarn_beta_slow=12.0))
    assert narrow == {"beta_fast": 32.0, "beta_slow": 12.0}
    pi = rope_inv_freq(rescale(base, "linear", 4.0, 128, 512).config)
    short = rope_inv_freq(rescale(base, "yarn", 4.0, 128, 512, narrow).config)
    assert torch.allclose(short[0][1:], pi[0][1:]) and short[0][0] == 1.0 and short[1] == default[1]
    assert not torch.allclose(default[0][1:], pi[0][1:])
    assert rescale(base, "linear", 4.0, 128, 512, narrow).config.rope_scaling.get("beta_fast") is None  # yarn only


def test_held_out_keys_and_training_filler_never_meet_the_evaluation():
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.eval.passkey import TRAIN_FILLERS, held_out_key
    from llmlab.train.loader import TokenArrayLoader
    tok = CharTok()
    ev, tr = PasskeyTask(tok, keys="held_out"), PasskeyTask(tok, keys="train")
    ev_keys = {ev.make(300, 0.5, random.Random(i)).key for i in range(200)}
    tr_keys = {tr.make(300, 0.5, random.Random(i)).key for i in range(600)}
    assert ev_keys and tr_keys and not ev_keys & tr_keys
    assert all(held_out_key(k) for k in ev_keys) and not any(held_out_key(k) for k in tr_keys)
    assert 0.2 < sum(held_out_key(str(k)) for k in range(10000, 30000)) / 20000 < 0.3  # about 1 in 4
    with pytest.raises(UserError, match="keys"):
        PasskeyTask(tok, keys="some")
    assert not any(s.strip() + "." in FILLER for f in TRAIN_FILLERS for s in f.split(".") if s.strip())
    e = tr.make(300, 0.0, random.Random(0), filler=tok.encode(" abc"))
    assert tok.decode(e.ids).startswith(INTRO + NEEDLE.format(key=e.key) + " abc abc")
    text = torch.randint(0, 32, (20_000,), generator=torch.Generator().manual_seed(0))  # < 32: no printable char
    for share in (0.0, 1.0):  # the rows' filler: training sentences only, or the replaced corpus window only
        x, _ = next(iter(PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, seed=2, text_filler=share)))
        rows = [tok.decode(r.tolist()) for r in x]
        assert not any(FILLER[:20] in r for r in rows)
        assert all(any(f[:20] in r for f in TRAIN_FILLERS) for r in rows) == (share == 0.0)
        assert all(any(ord(c) < 32 for c in r) for r in rows) == (share == 1.0)


def test_answer_only_loss_keeps_the_passkey_answer_and_other_rows():
    """passkey_loss=answer: a passkey row's targets are -100 except its answer (the key's tokens after
    the question); copy and text rows keep every target; x is unchanged."""
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.train.loader import TokenArrayLoader
    tok = CharTok()
    task = PasskeyTask(tok, keys="train")
    text = torch.randint(0, 50, (20_000,), generator=torch.Generator().manual_seed(0))
    full = PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, seed=3, copy_fraction=0.25)
    ans = PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, seed=3, copy_fraction=0.25,
                           passkey_loss="answer")
    (xf, yf), (xa, ya) = next(iter(full)), next(iter(ans))
    assert torch.equal(xf, xa) and torch.equal(yf[2:], ya[2:])
    for row in (0, 1):
        kept = (ya[row] != -100).nonzero().flatten()
        assert kept.tolist() == list(range(300 - 6, 300))  # " " and the 5 digits of the key, at the end
        assert tok.decode(ya[row, kept].tolist()) == " " + tok.decode(xf[row].tolist()).split("The pass key is ")[1][:5]
    with pytest.raises(UserError):
        PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, passkey_loss="filler")


def test_random_copy_period_repeats_at_varied_periods():
    """copy_period=random: each repeated row is periodic with its own period h in [T/16, T/2] (so no
    fixed-offset head predicts them all); half: every row repeats at (T+1)//2."""
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.train.loader import TokenArrayLoader
    text = torch.randint(0, 50, (40_000,), generator=torch.Generator().manual_seed(0))
    task = PasskeyTask(CharTok(), keys="train")

    def periods(kind):
        x, y = next(iter(PasskeyMixLoader(TokenArrayLoader(text, 300, 8), task, 300, 0.25, seed=2,
                                          copy_fraction=0.75, copy_period=kind)))
        w = torch.cat([x, y[:, -1:]], 1)
        return [next(h for h in range(1, 301) if torch.equal(w[i, h:], w[i, :-h])) for i in range(2, 8)]
    rand = periods("random")
    assert all(300 // 16 <= h <= 150 for h in rand) and len(set(rand)) >= 4
    assert periods("half") == [150] * 6
    with pytest.raises(UserError):
        PasskeyMixLoader(TokenArrayLoader(text, 300, 4), task, 300, 0.5, copy_period="fixed")


def _recipe():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "passkey_recipe.py"
    spec = importlib.util.spec_from_file_location("passkey_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_passkey_recipe_schedule_and_best_checkpoint(tmp_path):
    """--decay-from: constant to S, then linear to min_lr x rate at step `steps`; --select best copies
    the kept checkpoint with the most validation keys (ties: the later step) to base/model."""
    import json
    from types import SimpleNamespace
    rec = _recipe()
    a = SimpleNamespace(lr=1.0, warmup=10, decay_from=100, min_lr=0.1, steps=200)
    assert rec.lr_at(0, a) == pytest.approx(0.1) and rec.lr_at(9, a) == 1.0 and rec.lr_at(100, a) == 1.0
    assert rec.lr_at(150, a) == pytest.approx(0.55) and rec.lr_at(199, a) == pytest.approx(0.109) and rec.lr_at(200, a) == pytest.approx(0.1)
    assert rec.lr_at(150, SimpleNamespace(**{**vars(a), "decay_from": 0})) == 1.0  # 0: constant
    base = tmp_path / "base"
    for step in (1, 2, 3):
        (base / "ckpt" / f"step_{step}").mkdir(parents=True)
        (base / "ckpt" / f"step_{step}" / "w").write_text(str(step))
    (base / "model").mkdir()
    lines = [{"step": 1, "keys": 0.5}, {"step": 2, "keys": 0.9}, {"step": 3, "keys": 0.9}, {"step": 4, "keys": 1.0}]
    best = rec.select_best(base, lines)  # step 4 has no kept checkpoint; 2 and 3 tie: the later
    assert best["step"] == 3 and (base / "model" / "w").read_text() == "3"
    assert json.loads((base / "selected.json").read_text())["step"] == 3
    assert rec.select_best(tmp_path / "none", lines) == {}


def _needle_ends(rows_ids, tok):
    """Per row: (needle right after the intro, needle right before the question, the row's key)."""
    out = []
    for r in rows_ids:
        s = tok.decode(r)
        key = s.rsplit(QUESTION, 1)[1].strip()
        needle = NEEDLE.format(key=key)
        out.append((s.startswith(INTRO + needle), needle + QUESTION in s, key, s))
    return out


def test_endpoint_share_puts_needles_at_exactly_depth_0_and_1():
    """endpoint_share=s: s/2 of the passkey rows have the needle right after the intro (depth 0), s/2 right
    before the question (depth 1), the rest uniform; s=0 is the old uniform draw; keys stay in the training
    split and the evaluation's FILLER never appears."""
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.eval.passkey import held_out_key
    from llmlab.train.loader import TokenArrayLoader
    tok = CharTok()
    tr = PasskeyTask(tok, keys="train")
    text = torch.randint(0, 32, (200_000,), generator=torch.Generator().manual_seed(0))  # no printable char

    def rows(share, batches=50):
        loader = PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, seed=4, endpoint_share=share)
        it = iter(loader)
        return _needle_ends([torch.cat([x, y[:, -1:]], 1)[i].tolist() for x, y in (next(it) for _ in range(batches))
                             for i in range(8)], tok)
    with_ends, uniform = rows(0.4), rows(0.0)
    n = len(with_ends)
    start, end = sum(r[0] for r in with_ends) / n, sum(r[1] for r in with_ends) / n
    assert 0.14 < start < 0.26 and 0.14 < end < 0.26, (start, end)
    assert sum(r[0] or r[1] for r in uniform) <= 2  # a uniform draw almost never lands exactly there
    inner = [r[3] for r in with_ends if not (r[0] or r[1])]
    n_fill = 301 - len(INTRO) - len(NEEDLE.format(key="12345")) - len(QUESTION) - 6
    depths = [(r.index(" The pass key is") - len(INTRO)) / n_fill for r in inner]
    assert 0.4 < sum(d < 0.5 for d in depths) / len(depths) < 0.6  # the rest still uniform over the window
    assert 0.0 < min(depths) < 0.1 and 0.9 < max(depths) < 1.0
    for r in with_ends + uniform:
        assert len(r[2]) == 5 and not held_out_key(r[2]) and FILLER[:20] not in r[3]
    m = PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, endpoint_share=0.4)
    assert [m.depth(u) for u in (0.0, 0.1999, 0.2, 0.3999)] == [0.0, 0.0, 1.0, 1.0]
    assert m.depth(0.4) == 0.0 and m.depth(0.7) == pytest.approx(0.5) and m.depth(0.99) < 1.0
    m0 = PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0)
    us = [random.Random(5).random() for _ in range(100)]
    assert [m0.depth(u) for u in us] == us  # share 0: bit-identical to the old draw
    for bad in (-0.1, 1.0):
        with pytest.raises(UserError, match="endpoint_share"):
            PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, endpoint_share=bad)
    m1 = PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, endpoint_share=0.6, endpoint_depth1=0.75)
    assert [m1.depth(u) for u in (0.0, 0.1499, 0.15, 0.5999)] == [0.0, 0.0, 1.0, 1.0]
    assert m1.depth(0.6) == 0.0 and m1.depth(0.8) == pytest.approx(0.5)
    for bad in (-0.1, 1.1):
        with pytest.raises(UserError, match="endpoint_depth1"):
            PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, endpoint_share=0.4, endpoint_depth1=bad)


def test_endpoint_depth1_moves_the_endpoint_rows_to_depth_1():
    """endpoint_depth1=d: of the share s of endpoint rows, s d have the needle at depth 1 and s (1 - d) at
    depth 0, counted in real rows; d=0.5 gives bit-identical rows to the default."""
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.train.loader import TokenArrayLoader
    tok = CharTok()
    tr = PasskeyTask(tok, keys="train")
    text = torch.randint(0, 32, (200_000,), generator=torch.Generator().manual_seed(0))

    def batches(**kw):
        it = iter(PasskeyMixLoader(TokenArrayLoader(text, 300, 8), tr, 300, 1.0, seed=4, **kw))
        return [torch.cat([x, y[:, -1:]], 1) for x, y in (next(it) for _ in range(50))]
    late = _needle_ends([r.tolist() for b in batches(endpoint_share=0.6, endpoint_depth1=2 / 3) for r in b], tok)
    start, end = sum(r[0] for r in late) / len(late), sum(r[1] for r in late) / len(late)
    assert 0.14 < start < 0.26 and 0.33 < end < 0.47, (start, end)
    same = zip(batches(endpoint_share=0.4), batches(endpoint_share=0.4, endpoint_depth1=0.5))
    assert all(torch.equal(a, b) for a, b in same)


def test_longctx_hands_endpoint_share_to_the_base_and_the_fine_tune(monkeypatch, tmp_path):
    import llmlab.data.loader
    import llmlab.train.trainer
    from llmlab.ablate.longctx import LongCtxConfig, _train
    from llmlab.train.loader import TokenArrayLoader
    seen = []
    monkeypatch.setattr(llmlab.data.loader, "TokenWindowLoader",
                        lambda path, seq_len, batch, seed: TokenArrayLoader(torch.zeros(5000, dtype=torch.long),
                                                                            seq_len, batch))
    monkeypatch.setattr(llmlab.train.trainer, "train", lambda tcfg, model, loader: seen.append(loader))
    task = PasskeyTask(CharTok(), keys="train")
    for share in (0.0, 0.4):
        _train(LongCtxConfig(endpoint_share=share), None, 300, 2, 1, 1e-3, tmp_path, {"train": "x"}, task, 1)
    assert [ld.endpoint_share for ld in seen] == [0.0, 0.4]
    _train(LongCtxConfig(endpoint_share=0.6, endpoint_depth1=0.75), None, 300, 2, 1, 1e-3, tmp_path, {"train": "x"},
           task, 1)
    assert [ld.endpoint_depth1 for ld in seen] == [0.5, 0.5, 0.75]
