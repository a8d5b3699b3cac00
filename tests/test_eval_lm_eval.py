"""The lm-eval bridge: lm_eval.simple_evaluate on our model gives our harness's exact scores."""
from __future__ import annotations

import pytest

pytest.importorskip("datasets")
lm_eval = pytest.importorskip("lm_eval")


def test_simple_evaluate_equals_our_harness(smollm2, smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    from llmlab.eval.harness import EvalContext
    from llmlab.eval.lm_eval_bridge import LlmlabLM, export_multiple_choice
    from llmlab.eval.tasks.mmlu import MMLU

    ctx = EvalContext(smollm2, smollm2_tokenizer)
    task = MMLU(0)
    items = task.items(6, 1234)
    ours = task.evaluate(ctx, items)
    export_multiple_choice("llmlab_mmlu_t", [{"prompt": it["prompt"], "choices": it["letters"],
                                              "answer": it["answer"]} for it in items], tmp_path)
    res = lm_eval.simple_evaluate(model=LlmlabLM(ctx=ctx), tasks=["llmlab_mmlu_t"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    r = res["results"]["llmlab_mmlu_t"]
    assert r["acc,none"] == ours["acc"] and r["acc_norm,none"] == ours["acc_norm"]
    # per-sample log-likelihoods are bitwise the ones our harness computes
    ll = ctx.loglik([(it["prompt"], " " + L) for it in items for L in it["letters"]])
    samples = sorted(res["samples"]["llmlab_mmlu_t"], key=lambda s: s["doc_id"])
    theirs = [float(x[0]) for s in samples for x in s["filtered_resps"]]
    assert theirs == [x.logprob for x in ll]


def test_bridge_rolling_and_generate(tiny_config):
    import torch
    from lm_eval.api.instance import Instance

    from llmlab.eval.harness import EvalContext
    from llmlab.eval.lm_eval_bridge import LlmlabLM
    from llmlab.model import Transformer

    class Tok:  # a byte tokenizer, enough for a 97-token tiny model
        bos_id, eos_id, chat_template = None, 96, None

        def encode(self, text, allow_special=False):
            return [b % 90 for b in text.encode()]

        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    torch.manual_seed(0)
    lm = LlmlabLM(ctx=EvalContext(Transformer(tiny_config).eval(), Tok(), max_length=16))
    text = "some text that is longer than sixteen tokens for sure"
    roll = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert roll[0] == pytest.approx(-lm.ctx.rolling([text])[0][0])
    gen = lm.generate_until([Instance("generate_until", {}, ("abc", {"until": ["zz"], "max_gen_toks": 5}), 0)])
    assert isinstance(gen[0], str) and len(gen[0]) <= 5
