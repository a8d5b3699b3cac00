"""Tasks from packaged data, bad input, contamination and the report card (tiny model: fast)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from llmlab.errors import UserError
from llmlab.eval.contamination import NgramIndex, contamination
from llmlab.eval.harness import EvalContext, run_task
from llmlab.eval.report import make_card, markdown_table, write_card
from llmlab.eval.tasks import get_task, task_names
from llmlab.model import Transformer


class ByteTok:
    """Bytes mod 96 as ids (+ EOS 96): lets the 97-token tiny model run every task."""
    bos_id, eos_id, chat_template = None, 96, None

    def encode(self, text, allow_special=False):
        return [b % 96 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(32 + i for i in ids if i < 96).decode("latin-1")


@pytest.fixture(scope="module")
def tiny_ctx():
    from llmlab.model.config import ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512)
    return EvalContext(Transformer(cfg).eval(), ByteTok(), batch_size=8)


def test_every_task_runs_and_reports_chance(tiny_ctx):
    for name in task_names():
        res = run_task(get_task(name), tiny_ctx, limit=2)
        assert res["n"] == 2 and "chance" in res and res["version"], res
        assert res["seconds"] >= 0 and res["truncated"] >= 0


def test_items_are_deterministic_and_seeded():
    for name in ("mmlu_3shot", "arithmetic", "wiki_cloze", "ifeval_lite", "zh_idiom", "perplexity_zh"):
        t = get_task(name)
        assert t.items(5, 7) == t.items(5, 7)
    assert get_task("arithmetic").items(5, 7) != get_task("arithmetic").items(5, 8)


def test_mmlu_items_and_prompt_equal_lm_eval_template():
    from jinja2 import Template

    from llmlab.eval.tasks.mmlu import doc_text, load_items
    items = load_items()
    assert len(items) == 282 and len({i["subject"] for i in items}) == 57
    spec = importlib.util.find_spec("lm_eval")
    tmpl = yaml.safe_load((Path(list(spec.submodule_search_locations)[0]) / "tasks" / "mmlu" / "default"
                           / "_default_template_yaml").read_text())["doc_to_text"]
    for it in items:
        if len(it["choices"]) == 4:
            assert doc_text(it) == Template(tmpl).render(question=it["question"], choices=it["choices"])
    for it in get_task("mmlu_3shot").items(None, 1):
        assert it["prompt"].count("\nAnswer:") == 4  # 3 shots + the question
        assert it["prompt"].count(doc_text(it)) == 1  # never its own example


def test_generated_answers_are_right():
    for it in get_task("arithmetic").items(40, 3):
        q = it["question"]
        a, b = map(int, re.findall(r"\d+", q)[:2])
        if "plus" in q or "more" in q:
            assert int(it["answer"]) == a + b
        elif "minus" in q or "left" in q:
            assert int(it["answer"]) == a - b
    for it in get_task("wiki_cloze").items(30, 3):
        assert it["answer"] in it["passage"] and "_____" in it["question"]
        assert it["question"].replace("_____", it["answer"]) in it["passage"]
        assert 0 < it["chance"] <= 1


def test_task_file_missing_field_names_file_and_line(tmp_path):
    p = tmp_path / "mc.jsonl"
    p.write_text('{"query": "2+2=", "choices": ["3", "4"], "gold": 1}\n{"query": "1+1=", "choices": ["2"]}\n')
    with pytest.raises(UserError, match=r"mc\.jsonl:2: missing field 'gold'"):
        get_task(str(p))
    p.write_text('{"query": "2+2=", "choices": ["3", "4"], "gold": 1}\n{not json\n')
    with pytest.raises(UserError, match=r"mc\.jsonl:2: invalid JSON"):
        get_task(str(p))
    with pytest.raises(UserError, match="unknown eval task 'nope'"):
        get_task("nope")
    p.write_text('{"query": "2+2=", "choices": ["3", "4"], "gold": 1}\n\n{"query": "1+1=", "choices": ["2"], "gold": 1}\n'
                 '{"query": "1+1=", "choices": 2, "gold": 0}\n')  # a blank line: the bad item is on line 3
    with pytest.raises(UserError, match=r"mc\.jsonl:3: 'gold' must index 'choices' \(gold=1, 1 choices\)"):
        get_task(str(p))
    p.write_text('{"query": "1+1=", "choices": 2, "gold": 0}\n')
    with pytest.raises(UserError, match=r"mc\.jsonl:1: 'choices' must be a non-empty list"):
        get_task(str(p))


def test_custom_jsonl_task_and_cli_error(tmp_path, tiny_ctx):
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps({"query": f"{i}+1=", "choices": [str(i + 1), str(i + 2)], "gold": 0}) + "\n"
                         for i in range(4)))
    res = run_task(get_task(str(p)), tiny_ctx)
    assert res["n"] == 4 and res["chance"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    from llmlab.cli import main
    assert main(["eval", f"tasks={bad}"]) == 2  # UserError: one line, exit 2, before loading a model


def test_prompt_longer_than_context_is_reported(tiny_ctx):
    from llmlab.eval.tasks.custom import JsonlTask
    long = "word " * 200  # 1000 byte-tokens > 512 window
    g = tiny_ctx.generate(long, max_new_tokens=4)
    assert g.truncated
    task = JsonlTask.__new__(JsonlTask)
    task.name, task.kind, task._items = "long", "multiple_choice", [{"query": long, "choices": ["a", "b"], "gold": 0}]
    assert run_task(task, tiny_ctx)["truncated"] == 2  # both choices' contexts were cut


def test_contamination_detects_leaked_items(tmp_path):
    task = get_task("wiki_cloze")
    items = task.items(10, 5)
    texts = task.texts(items)
    corpus = tmp_path / "train.txt"
    corpus.write_text("unrelated line about nothing in particular at all here\n" + "\n".join(texts[:3]) + "\n")
    idx = NgramIndex.from_file(corpus, n=8)
    res = contamination(idx, texts)
    assert res["contaminated_items"] == 3 and res["contaminated_frac"] == pytest.approx(0.3)
    with pytest.raises(UserError, match="not found"):
        NgramIndex.from_file(tmp_path / "missing.txt")
    # Chinese has no spaces: characters are the tokens; a train.jsonl corpus is read by its "text"
    zh = get_task("perplexity_zh").items(4, 5)
    jl = tmp_path / "train.jsonl"
    jl.write_text(json.dumps({"text": "前言。" + zh[1][5:]}, ensure_ascii=False) + "\n")
    res = contamination(NgramIndex.from_file(jl), zh)
    assert res["contaminated_items"] == 1 and 0 < res["ngram_overlap"] < 1


def test_report_card_json_and_markdown(tmp_path, tiny_ctx):
    model_file = tmp_path / "w.bin"
    model_file.write_bytes(b"weights")
    res = [run_task(get_task("mmlu_0shot"), tiny_ctx, limit=2), run_task(get_task("perplexity_en"), tiny_ctx, limit=2)]
    card = make_card("tiny", model_file, 1234, {"batch_size": 8}, res)
    jp, mp = write_card(card, tmp_path / "out")
    loaded = json.loads(jp.read_text())
    import hashlib
    assert loaded["model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert [t["version"] for t in loaded["tasks"]] == ["1", "1"] and loaded["seed"] == 1234
    md = mp.read_text()
    assert md == markdown_table(card) and "| mmlu_0shot | 1 | 2 | acc |" in md and "bits_per_byte" in md


@pytest.mark.slow
def test_cli_writes_report_card_for_smollm2(tmp_path):
    from llmlab.cli import main
    assert main(["eval", "tasks=mmlu_0shot:2,arithmetic:1", f"output_dir={tmp_path}"]) == 0
    card = json.loads((tmp_path / "report_card.json").read_text())
    assert [t["task"] for t in card["tasks"]] == ["mmlu_0shot", "arithmetic"]
    assert len(card["model_sha256"]) == 64 and (tmp_path / "report_card.md").read_text().startswith("Model `smollm2`")
