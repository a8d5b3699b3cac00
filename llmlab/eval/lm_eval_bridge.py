"""lm-eval bridge: our models behind EleutherAI lm-evaluation-harness's `LM` interface.

`LlmlabLM` answers lm-eval's three request types with this package's own machinery, so a task
scored through `lm_eval.simple_evaluate(model=LlmlabLM(...))` gets exactly the numbers our
harness computes (same context/continuation split, same batch-invariant scoring):
  loglikelihood(context, continuation) -> (logprob, is_greedy)   llmlab.eval.scoring
  loglikelihood_rolling(text)          -> logprob of the whole text (disjoint windows)
  generate_until(context, gen_kwargs)  -> greedy text cut at `until`, <= max_gen_toks tokens
`export_multiple_choice` writes one of our multiple-choice tasks as an lm-eval task (JSONL +
YAML, loaded offline through `datasets`' json builder) so lm-eval can run it. Importing this
module needs lm-eval (and `datasets`, which lm-eval imports).
"""
from __future__ import annotations

import json
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llmlab.eval.harness import EvalContext


@register_model("llmlab")
class LlmlabLM(LM):
    def __init__(self, model="smollm2", batch_size: int = 16, max_length: int | None = None,
                 ctx: EvalContext | None = None):
        super().__init__()
        if ctx is None:
            from llmlab.model.load import load_model
            from llmlab.tokenizer.bpe import load_tokenizer
            m, path = load_model(model)
            ctx = EvalContext(m.eval(), load_tokenizer(path), int(batch_size),
                              max_length=int(max_length) if max_length else None)
        self.ctx = ctx

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return [(r.logprob, r.greedy) for r in self.ctx.loglik([req.args for req in requests])]

    def loglikelihood_rolling(self, requests) -> list[float]:
        return [-nll for nll, _ in self.ctx.rolling([req.args[0] for req in requests])]

    def generate_until(self, requests) -> list[str]:
        groups: dict[tuple, list[int]] = {}  # requests with the same settings run together
        for i, req in enumerate(requests):
            _, kw = req.args
            until = kw.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((until, int(kw.get("max_gen_toks", 256))), []).append(i)
        out = [""] * len(requests)
        for (until, max_toks), idx in groups.items():
            gens = self.ctx.generate_many([requests[i].args[0] for i in idx], max_toks, list(until))
            for i, g in zip(idx, gens):
                out[i] = g.text
        return out


def export_multiple_choice(name: str, items: list[dict], out_dir: str | Path) -> Path:
    """Write items {"prompt", "choices" (continuations without the leading space), "answer"}
    as lm-eval task `name` in out_dir; returns out_dir (pass it as TaskManager(include_path=...))."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"prompt": it["prompt"], "choices": it["choices"], "answer": it["answer"]},
                               ensure_ascii=False) + "\n")
    metric = "  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
    (out / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        f"  cache_dir: {json.dumps(str((out / 'hf_cache').resolve()))}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: prompt\ndoc_to_choice: choices\n"
        "doc_to_target: answer\ntarget_delimiter: \" \"\nmetric_list:\n" + metric.format(m="acc")
        + metric.format(m="acc_norm") + "metadata:\n  version: 1.0\n", encoding="utf-8")
    return out
