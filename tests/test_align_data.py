"""Preference data builders on small fixed slices of packaged data, and bad-row handling."""
from __future__ import annotations

import json

import pytest

from llmlab.align import preference_data as D
from llmlab.align.humaneval_pairs import humaneval_pairs, load_humaneval, mutants
from llmlab.align.humaneval_check import run_humaneval, run_python
from llmlab.errors import UserError


def test_arithmetic_pairs_are_verifiable_and_seeded():
    rows = D.arithmetic_pairs(50, seed=3)
    assert rows == D.arithmetic_pairs(50, seed=3) and rows != D.arithmetic_pairs(50, seed=4)
    for r in rows:
        expr = r["prompt"].removeprefix("What is ").split("?")[0]
        assert int(r["chosen"]) == eval(expr)  # noqa: S307 - our own generated "a op b"
        assert 1 <= abs(int(r["rejected"]) - int(r["chosen"])) <= 3
    assert D.check_rows(rows) == rows


def test_arithmetic_rankings_ordered_by_distance():
    rows = D.arithmetic_rankings(20, k=4, seed=0)
    for r in rows:
        d = [abs(int(c) - int(r["answer"])) for c in r["completions"]]
        assert d[0] == 0 and d == sorted(d) and len(set(d)) == 4
    assert len(D.rankings_to_pairs(rows[:1])) == 6
    with pytest.raises(UserError):
        D.arithmetic_rankings(1, k=1)


def test_idiom_pairs():
    rows = D.idiom_pairs(10, seed=0)
    assert len(rows) == 10
    table = dict(D.load_idioms())
    for r in rows:
        word = r["prompt"].split("「")[1].split("」")[0]
        assert r["chosen"] == table[word] and r["rejected"] != r["chosen"]


def test_bad_rows_error_or_skip():
    bad = [{"prompt": "q", "chosen": "a", "rejected": "a"}, {"prompt": "q", "chosen": "", "rejected": "b"},
           {"prompt": "q", "completion": " ", "label": True}, {"prompt": "q", "completions": ["1", "1"]}]
    for row in bad:
        with pytest.raises(UserError, match="row 0"):
            D.check_rows([row])
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert D.check_rows(bad + [good], on_bad="skip") == [good]
    unpaired = D.pairs_to_unpaired([good])
    assert [r["label"] for r in unpaired] == [True, False] and D.check_rows(unpaired) == unpaired


def test_jsonl_roundtrip_and_errors(tmp_path):
    rows = D.arithmetic_pairs(3)
    D.write_jsonl(tmp_path / "p.jsonl", rows)
    assert D.read_jsonl(tmp_path / "p.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="bad.jsonl:1"):
        D.read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="not found"):
        D.read_jsonl(tmp_path / "missing.jsonl")


def test_sandbox_limits():
    assert run_python("assert 1 + 1 == 2").passed
    r = run_python("assert 1 == 2")
    assert not r.passed and "AssertionError" in r.detail
    assert run_python("while True: pass", timeout=1.0).status == "timeout"
    assert not run_python("x = bytearray(2 << 30)", mem_mb=256).passed  # address-space limit
    assert not run_python("import sys; sys.exit(3)").passed


def test_humaneval_pairs_verified():
    rows = humaneval_pairs(2, seed=0)
    assert len(rows) == 2
    probs = {p["task_id"]: p for p in load_humaneval()}
    for r in rows:
        p = probs[r["task_id"]]
        assert r["chosen"] == p["canonical_solution"] and r["rejected"] != r["chosen"]
        assert run_humaneval(p, r["chosen"]).passed and not run_humaneval(p, r["rejected"]).passed
    assert D.check_rows(rows) == rows
    assert "a > b" in mutants("a <= b", __import__("random").Random(0))


def test_build_rows_sources(tmp_path):
    assert len(D.build_rows("arithmetic", 5)) == 5
    assert all(len(r["completions"]) == 3 for r in D.build_rows("arithmetic_ranked", 4, k=3))
    D.write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(UserError, match="identical"):
        D.build_rows(str(tmp_path / "x.jsonl"), 0)
    with pytest.raises(UserError, match="data"):
        D.build_rows("nope", 3)


def test_sampled_rankings_are_ordered_by_reward():
    import torch

    from llmlab.align.sampled_rankings import graded_arithmetic_reward, sampled_rankings
    from llmlab.align.toy import CharTokenizer, toy_sum_prompts
    from llmlab.model import ModelConfig, Transformer

    row = {"answer": "7"}
    assert graded_arithmetic_reward(row, "7") > graded_arithmetic_reward(row, "8") > graded_arithmetic_reward(row, "12")
    assert graded_arithmetic_reward(row, "+") == 0.0
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=32))
    prompts = toy_sum_prompts(6)
    rows = sampled_rankings(model, tok, prompts, k=8, max_new_tokens=3)
    assert rows
    by_prompt = {p["prompt"]: p for p in prompts}
    for r in rows:
        comps = r.get("completions") or [r["chosen"], r["rejected"]]
        scores = [graded_arithmetic_reward(by_prompt[r["prompt"]], c) for c in comps]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert D.check_rows(rows) == rows


def test_build_rows_reads_trl_conversational_files(tmp_path):
    """A user's preference JSONL in TRL's three layouts gives the same plain rows; the message forms are
    marked chat (rendered with the template); a bad row is 'file:line' (line numbers count blank lines)."""
    user, good, bad = [{"role": "user", "content": "2+3?"}], [{"role": "assistant", "content": "5"}], \
        [{"role": "assistant", "content": "6"}]
    D.write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "2+3?", "chosen": "5", "rejected": "6"}])
    D.write_jsonl(tmp_path / "conv.jsonl", [{"prompt": user, "chosen": good, "rejected": bad}])
    D.write_jsonl(tmp_path / "implicit.jsonl", [{"chosen": user + good, "rejected": user + bad}])
    D.write_jsonl(tmp_path / "kto.jsonl", [{"prompt": user, "completion": good, "label": True}])
    want = {"prompt": "2+3?", "chosen": "5", "rejected": "6"}
    assert D.build_rows(str(tmp_path / "plain.jsonl"), 0) == [want]
    assert D.build_rows(str(tmp_path / "conv.jsonl"), 0) == [{**want, "chat": True}]
    assert D.build_rows(str(tmp_path / "implicit.jsonl"), 0) == [{**want, "chat": True}]
    assert D.build_rows(str(tmp_path / "kto.jsonl"), 0) == [{"prompt": "2+3?", "completion": "5", "label": True,
                                                            "chat": True}]
    sys_prompt = [{"role": "system", "content": "Be brief."}] + user
    (tmp_path / "multi.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n'
                                          + json.dumps({"prompt": sys_prompt, "chosen": good, "rejected": bad}) + "\n")
    with pytest.raises(UserError, match=r"multi\.jsonl:3: conversational 'prompt' must be one user turn"):
        D.build_rows(str(tmp_path / "multi.jsonl"), 0)
    (tmp_path / "same.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                         '{"prompt": "a", "chosen": "b", "rejected": "b"}\n')
    with pytest.raises(UserError, match=r"same\.jsonl:2: identical"):
        D.build_rows(str(tmp_path / "same.jsonl"), 0)
