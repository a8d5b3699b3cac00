"""Self-Instruct: filters (novelty by ROUGE-L, length, keywords, duplicates), the loop on a scripted
generator, the inference-engine generator on a tiny model, and (slow) SmolLM2 with a tiny budget."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.eval.rouge import rouge_l
from llmlab.finetune.jsonl import validate_record
from llmlab.finetune.instruct.self_instruct import clean_instruction, parse_listing, reject_reason, self_instruct
from llmlab.finetune.sft_eval import rouge_l_cjk


def test_rouge_l_cjk():
    a, b = "Give three tips for staying healthy.", "Give me three tips for staying happy!"
    assert rouge_l_cjk(a, b) == pytest.approx(rouge_l(a, b)[2])  # English: rouge-score's rougeL
    assert rouge_l_cjk("比喻做了多余的事", "做了多余的事情") == pytest.approx(2 * (6 / 7) * (6 / 8) / (6 / 7 + 6 / 8))
    assert rouge_l_cjk("", "x") == 0.0


def test_filters():
    pool = ["Give three tips for staying healthy.", "What is the capital of France?"]
    norm = {" ".join(p.lower().replace(".", "").replace("?", "").split()) for p in pool}
    assert reject_reason("Give three tips for staying healthy!", norm, pool) == "duplicate"
    assert reject_reason("Give three tips for staying very healthy.", norm, pool) == "similar"
    assert reject_reason("Draw a map of Spain.", norm, pool) == "keyword"
    assert reject_reason("Hi there", norm, pool) == "length"
    assert reject_reason("- Name a fruit that is red.", norm, pool) == "punctuation"
    assert reject_reason("Name a fruit that is red.", norm, pool) is None
    assert reject_reason("请列举三种水果。", norm, pool) is None  # CJK characters count as words
    assert clean_instruction('9. "Name a fruit that is red."') == "Name a fruit that is red."
    assert clean_instruction("1. 2. Task: Name a fruit.") == "Name a fruit."
    assert reject_reason("Here are some more tasks:", norm, pool) == "incomplete"
    assert clean_instruction("Instruction: Name two planets.") == "Name two planets."


def test_parse_listing():
    assert parse_listing(" Name a red fruit.\n10. Name a planet.\n11. Explain why") == ["Name a red fruit.",
                                                                                       "Name a planet."]
    assert parse_listing(" Name a red fruit\nSure, here are more:\n10) List two seas!") == ["Name a red fruit",
                                                                                          "List two seas!"]


def test_loop_on_scripted_generator():
    rounds = iter([[" Give three tips for staying healthy.\n10. Name three planets in the solar system.",
                    " Name three planets of the solar system.\n10. Draw a picture of a cat.\n11. Explain why",
                    " Explain why ice floats on water."],
                   [" Name a fruit that is yellow.\n10. Name a vegetable that is green.", "", ""]])
    calls = []

    def generate(convs, temperature, max_new_tokens, seeds, prefill):
        calls.append((len(convs), temperature, prefill))
        if temperature > 0:  # new-instruction requests: a numbered list of 8 examples to continue at 9.
            assert all("\n8. " in c[0]["content"] and "\n9. " not in c[0]["content"] for c in convs)
            assert len(set(seeds)) == len(seeds)
            return next(rounds)
        return [f"Answer to: {c[0]['content']}" if "ice" not in c[0]["content"] else "" for c in convs]

    recs, stats = self_instruct(generate, n=2, seed=1, per_round=3, max_rounds=5, progress=False)
    assert [r["messages"][0]["content"] for r in recs] == ["Name three planets in the solar system.",
                                                          "Name a fruit that is yellow."]
    assert stats["rejected"] == {"duplicate": 1, "similar": 1, "keyword": 1, "answer": 1}
    assert stats["accepted"] == 2 and stats["requests"] == 6 and stats["candidates"] == 7
    for r in recs:
        validate_record(r)
        assert r["provenance"] == "synthetic" and r["method"] == "self-instruct"
    assert calls[0] == (3, 0.7, "9.") and calls[1][1:] == (0.0, "") and calls[2][2] == "9."


def test_engine_generator_tiny_model(tiny_config):
    """The real generation path (inference engine, chat template) on a tiny random model: a budget
    of 1 round x 2 requests, whatever the (random) model writes is filtered, nothing crashes."""
    from llmlab.finetune.instruct.self_instruct import engine_generator
    from llmlab.model import Transformer
    from llmlab.model.config import ModelConfig
    from llmlab.tokenizer.chat import CHATML
    from llmlab.tokenizer.train_bpe import train_bpe

    tok = train_bpe(["Name three planets. Explain why ice floats."] * 3, vocab_size=280,
                    special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], chat_template=CHATML,
                    eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)).eval()
    gen = engine_generator(model, tok)
    replies = gen([[{"role": "user", "content": "Name a planet."}]] * 2, 0.8, 8, [1, 2], "9.")
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert gen([[{"role": "user", "content": "Name a planet."}]], 0.8, 8, [1], "9.") == replies[:1]  # seeded
    recs, stats = self_instruct(gen, n=2, per_round=2, max_rounds=1, progress=False)
    assert stats["requests"] == 2  # every parsed candidate is accepted or rejected with a reason
    assert len(recs) + sum(stats["rejected"].values()) == stats["candidates"] or len(recs) == 2
    for r in recs:
        validate_record(r)
    small = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    with pytest.raises(UserError, match="does not fit the model's context window"):
        self_instruct(engine_generator(small.eval(), tok), n=1, per_round=1, max_rounds=1, progress=False)


@pytest.mark.slow
def test_self_instruct_smollm2(tmp_path):
    from llmlab.cli import main
    from llmlab.finetune.jsonl import read_jsonl
    out = tmp_path / "si.jsonl"
    assert main(["sft", "self_instruct", "num_instructions=3", "max_rounds=2", "per_round=4", f"output={out}"]) == 0
    recs, _ = read_jsonl(out)
    assert 1 <= len(recs) <= 3 and all(r["provenance"] == "synthetic" for r in recs)
    instr = [r["messages"][0]["content"] for r in recs]
    assert all(rouge_l_cjk(a, b) < 0.7 for i, a in enumerate(instr) for b in instr[i + 1:])
