"""Coreset vs random instruction subset of the same size, one SFT each, held-out loss.

Pool: the FLAN-style mixture (`llmlab sft data datasets=flan`: arithmetic with CoT, idioms, Wikipedia;
its held-out split by question hash is the evaluation set). k records are chosen by k-center greedy on
MiniLM embeddings of the user turns, or at random (seeded). SmolLM2-135M-Instruct trains its top 2
blocks over a frozen trunk for 2 epochs (lr 1e-4, batch 4, mean token NLL of the assistant turn);
the metric is the mean token NLL of the assistant turns of n_eval held-out records (lower is better).
    python benchmarks/coreset_sft.py [--k 64 --n_eval 100 --seeds 0,1,2 --methods kcenter,random,kcenter_task]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics

import torch

from llmlab.align.encode import encode_completion, pad_id_of
from llmlab.align.frozen_trunk import fork, share_frozen_trunk
from llmlab.align.logprobs import sequence_logprobs
from llmlab.align.raft import sft_on_pairs
from llmlab.finetune.instruct.builders import split_heldout
from llmlab.finetune.instruct.coreset import select
from llmlab.finetune.instruct.flan import flan_mixture
from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer


def pairs(tok, recs):
    out = []
    for r in recs:
        user, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        p = tok.encode(tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True))
        out.append((p[-192:], encode_completion(tok, reply)[:64]))
    return out


@torch.no_grad()
def nll(model, items, pad) -> float:
    vals = []
    for s in range(0, len(items), 8):
        b = items[s:s + 8]
        lp, _ = sequence_logprobs(model, [p for p, _ in b], [c for _, c in b], pad, average=True)
        vals += (-lp).tolist()
    return statistics.mean(vals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--n_eval", type=int, default=100)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default="kcenter,random", help="any of kcenter, kcenter_task (per-task quotas), random")
    ap.add_argument("--radius-only", action="store_true", help="only the covering radius on MiniLM embeddings")
    ap.add_argument("--quick", action="store_true", help="the covering radius only, k=16, one seed")
    a = ap.parse_args()
    torch.set_num_threads(1)
    recs = flan_mixture(2000, 0)
    train, held = split_heldout(recs, 0.1, salt="flan")
    if a.quick:
        a.radius_only, a.k, a.seeds = True, 16, "0"
    if a.radius_only:
        return radius_only(train, a.k, [int(x) for x in a.seeds.split(",")])
    held = random.Random(0).sample(held, min(a.n_eval, len(held)))
    base, tok = load_model_and_tokenizer("smollm2", device="cpu", dtype="fp32")
    base = base.float().eval()
    for p in base.parameters():
        p.requires_grad_(False)
    share_frozen_trunk([base], 2)
    pad, ev = pad_id_of(tok), pairs(tok, held)
    before = nll(base, ev, pad)
    res = {"before": before, "k": a.k, "pool": len(train), "n_eval": len(ev), "runs": []}
    print(f"pool {len(train)}, held-out {len(ev)}, SFT model NLL {before:.4f}", flush=True)
    from llmlab.rag.embed import SentenceEncoder
    encode = SentenceEncoder().encode
    for s in [int(x) for x in a.seeds.split(",")]:
        for method in a.methods.split(","):
            sub = select(train, a.k, method, seed=s, embed=encode)
            tasks = {t: sum(r["task"] == t for r in sub) for t in ("arithmetic", "idiom", "wiki")}
            pol = fork(base)
            torch.manual_seed(s)
            sft_on_pairs(pol, pairs(tok, sub), 1e-4, 2, 4, pad, s)
            after = nll(pol.eval(), ev, pad)
            res["runs"].append({"seed": s, "method": method, "nll": after, "tasks": tasks})
            print(f"seed {s} {method}: held-out NLL {before:.4f} -> {after:.4f}; subset tasks {tasks}", flush=True)
    means = {m: statistics.mean(r["nll"] for r in res["runs"] if r["method"] == m) for m in a.methods.split(",")}
    ours = {f"{m}_nll": v for m, v in means.items() if m != "random"}
    # ratio: random's held-out NLL over each coreset's (> 1: the coreset fine-tunes better)
    print(json.dumps({"benchmark": "coreset_sft", "ours": ours, "peer": {"random_nll": means.get("random")},
                      "ratio": {"nll" if m == "kcenter" else f"{m}_nll": means["random"] / v for m, v in means.items()
                                if m != "random" and "random" in means}, "detail": res}))


def radius_only(train, k: int, seeds: list[int]) -> None:
    """Covering radius (max distance of a pool record to its nearest chosen one) and task mix."""
    from llmlab.finetune.instruct.coreset import covering_radius, instruction_texts, k_center_greedy
    from llmlab.rag.embed import SentenceEncoder
    x = SentenceEncoder().encode(instruction_texts(train))
    out = {}
    for s in seeds:
        kc = k_center_greedy(x, k, seed=s)
        rd = random.Random(s).sample(range(len(train)), k)
        for name, idx in (("kcenter", kc), ("random", rd)):
            tasks = {t: sum(train[i]["task"] == t for i in idx) for t in ("arithmetic", "idiom", "wiki")}
            out[f"{name}@{s}"] = {"radius": covering_radius(x, idx), "tasks": tasks}
            print(f"seed {s} {name}: covering radius {out[f'{name}@{s}']['radius']:.3f}, tasks {tasks}", flush=True)
    kc = statistics.mean(out[f"kcenter@{s}"]["radius"] for s in seeds)
    rd = statistics.mean(out[f"random@{s}"]["radius"] for s in seeds)
    # ratio: random's covering radius over k-center's (> 1: the coreset covers the pool more tightly)
    print(json.dumps({"benchmark": "coreset_radius", "k": k, "pool": len(train), "runs": out,
                      "ours": {"kcenter_radius": kc}, "peer": {"random_radius": rd}, "ratio": {"radius": rd / kc}}))


if __name__ == "__main__":
    main()
