"""The alignment CLI verbs end to end on a tiny random HF-style model with a tiny BPE tokenizer."""
from __future__ import annotations

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.errors import UserError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from llmlab.model import ModelConfig, Transformer
    from llmlab.model.hf import save_hf_dir

    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["What is 12 + 30? Answer with the number only. 42 Human Assistant"] * 10, trainer)
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tk.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, eos_token_id=0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf_dir(Transformer(cfg), path, extra_files={
        "tokenizer.json": tk.to_str(),
        "tokenizer_config.json": json.dumps({"eos_token": "<|endoftext|>", "chat_template": template})})
    return path


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow  # five verbs, each loading a model: ~20 s on one core
def test_cli_reward_dpo_grpo_ppo_cai(tiny_dir, tmp_path, capsys):
    m = f"model={tiny_dir}"
    assert main(["reward", m, "num_rows=8", "eval_rows=4", "per_device_train_batch_size=4",
                 f"output_dir={tmp_path / 'rm'}", "data=arithmetic_ranked", "loss=pl"]) == 0
    out = last_json(capsys)
    assert 0 <= out["heldout_pairwise_accuracy_after"] <= 1 and (tmp_path / "rm/model/v_head.safetensors").is_file()
    for loss in ("dpo", "orpo"):
        assert main(["dpo", m, f"loss_type={loss}", "num_rows=4", "eval_rows=4", f"output_dir={tmp_path / loss}"]) == 0
        assert last_json(capsys)["steps"] == 1
    assert main(["grpo", m, "max_steps=1", "num_rows=2", "eval_rows=2", "num_generations=2",
                 "max_completion_length=3", f"output_dir={tmp_path / 'grpo'}"]) == 0
    assert "heldout_exact_match_after" in last_json(capsys)
    assert main(["grpo", m, "supervision=process", "step_end=digits", "max_steps=1", "num_rows=2", "eval_rows=2",
                 "num_generations=2", "max_completion_length=3", f"output_dir={tmp_path / 'grpo_process'}"]) == 0
    assert last_json(capsys)["supervision"] == "process"
    assert main(["ppo", m, "max_steps=1", "num_rows=4", "eval_rows=2", "rollout_batch_size=2", "mini_batch_size=2",
                 "max_completion_length=3", "reward=model", f"reward_model={tmp_path / 'rm/model'}",
                 f"output_dir={tmp_path / 'ppo'}"]) == 0
    assert last_json(capsys)["steps"] == 1
    assert len((tmp_path / "ppo/metrics.jsonl").read_text().splitlines()) == 1
    assert main(["cai", m, "max_new_tokens=4", f"output_dir={tmp_path / 'cai'}"]) == 0
    assert last_json(capsys)["sft_rows"] >= 1


def test_cli_user_errors(tiny_dir, tmp_path):
    """Through the verbs' own config + run (the full `llmlab` entry point is covered by the slow test)."""
    from llmlab.align.commands import VERBS
    from llmlab.config import load_config
    from llmlab.errors import UserError

    def run(verb, *args):
        VERBS[verb].run(load_config(VERBS[verb].config, [f"model={tiny_dir}", f"output_dir={tmp_path}", *args]))

    with pytest.raises(UserError, match="data"):
        run("dpo", "data=nope")
    with pytest.raises(UserError, match="not found"):
        run("dpo", f"ref_model={tmp_path}/missing")
    with pytest.raises(UserError, match="reward"):
        run("grpo", "reward=bogus")
    with pytest.raises(UserError, match="reward_model"):
        run("ppo", "reward=model")
    with pytest.raises(UserError, match="step_reward"):
        run("grpo", "supervision=process", "step_reward=bogus")
    with pytest.raises(UserError, match="step_end"):
        run("grpo", "supervision=process", "step_end=words")


def test_cli_grpo_process_supervision_runs(tiny_dir, tmp_path):
    """`llmlab grpo supervision=process` trains with the built-in step reward (digits as steps)."""
    from llmlab.align.commands import VERBS
    from llmlab.config import load_config
    cfg = load_config(VERBS["grpo"].config, [f"model={tiny_dir}", f"output_dir={tmp_path}", "supervision=process",
                                             "max_steps=1", "num_rows=2", "eval_rows=2", "num_generations=2",
                                             "max_completion_length=3"])
    assert VERBS["grpo"].run(cfg) == 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_cli_splits_share_no_prompt(tmp_path):
    from llmlab.align.commands import _split_rows
    from llmlab.align.preference_data import arithmetic_pairs, write_jsonl
    train, held = _split_rows("arithmetic", 300, 64, 0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held} and len(train) == 300
    write_jsonl(tmp_path / "p.jsonl", arithmetic_pairs(20, 5))
    train, held = _split_rows(str(tmp_path / "p.jsonl"), 100, 4, 0)
    assert len(held) == 4 and len(train) <= 16 and not {r["prompt"] for r in train} & {r["prompt"] for r in held}


def test_cli_dpo_on_a_trl_conversational_file(tiny_dir, tmp_path):
    """A user's TRL-style conversational preference file trains with the chat template (as TRL does)."""
    from llmlab.align.commands import VERBS
    from llmlab.config import load_config
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 30?"}],
             "chosen": [{"role": "assistant", "content": str(i + 30)}],
             "rejected": [{"role": "assistant", "content": str(i + 31)}]} for i in range(6)]
    (tmp_path / "conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(VERBS["dpo"].config, [f"model={tiny_dir}", f"output_dir={tmp_path / 'o'}", "max_steps=1",
                                            f"data={tmp_path / 'conv.jsonl'}", "num_rows=4", "eval_rows=2"])
    assert not cfg.chat and VERBS["dpo"].run(cfg) == 0
    assert json.loads((tmp_path / "o" / "model" / "align.json").read_text())["config"]["chat"] is True
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": rows[0]["prompt"] + rows[0]["chosen"]}) + "\n")
    cfg = load_config(VERBS["dpo"].config, [f"model={tiny_dir}", f"output_dir={tmp_path / 'no'}",
                                            f"data={tmp_path / 'sft.jsonl'}"])
    with pytest.raises(UserError, match=r"sft\.jsonl:1: a 'messages' conversation is SFT data"):
        VERBS["dpo"].run(cfg)
    assert not (tmp_path / "no").exists()  # nothing left behind by a bad file
