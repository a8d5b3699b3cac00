"""Held-out generation metrics for instruction tuning: arithmetic exact match, idiom ROUGE-L.

Items are the held-out splits of the `arith_en` and `idiom_zh` builders (the same question hash
as `llmlab sft data`, so never seen in training). Each question is rendered with the model's chat
template (generation prompt on) and answered greedily; prompts run in left-padded batches with a
padding mask (works for every PEFT wrapper; left padding can move logits by ~1e-5, enough to flip
a near-tie argmax, as llmlab.eval.generation notes).

- arithmetic: exact match of the last integer of the reply (`llmlab.eval.answers`);
- idiom: ROUGE-L F (Lin 2004) of the reply against the reference explanation (释义). Chinese has
  no spaces and rouge-score's tokenizer drops non-ASCII, so tokens are single CJK characters plus
  ASCII words, punctuation dropped: the usual character-level ROUGE for Chinese.
"""
from __future__ import annotations

from llmlab.eval.rouge import rouge_l_cjk, zh_tokens  # noqa: F401  (zh_tokens re-exported)
from llmlab.infer.generate import generate_batch
from llmlab.infer.sampling import SamplingParams

def heldout_items(name: str, limit: int = 50, num_examples: int = 500, seed: int = 0,
                  heldout_fraction: float = 0.1) -> list[dict]:
    from llmlab.finetune.instruct.builders import BUILDERS, split_heldout

    return split_heldout(BUILDERS[name](num_examples, seed), heldout_fraction, salt=name)[1][:limit]


def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                 pad_id: int = 0) -> list[list[int]]:
    """Greedy continuation of left-padded prompts (stop tokens not included): the one decoding
    loop, `llmlab.infer.generate.generate_batch`."""
    out = generate_batch(model, prompts, SamplingParams(max_new_tokens=max_new_tokens), stop_ids=sorted(stop_ids),
                         pad_id=pad_id)
    return out.completions(keep_stop=False)


def answer(model, tok, questions: list[list[dict]], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy replies to chat prompts (lists of messages ending with the user turn)."""
    from llmlab.finetune.sft_data import end_of_turn

    eot = end_of_turn(tok)
    stops = {i for i in (tok.eos_id, tok.special.get(eot) if eot else None) if i is not None}
    enc = [tok.encode(tok.apply_chat_template(q, add_generation_prompt=True)) for q in questions]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # similar lengths batch together
    replies = [""] * len(enc)
    was = model.training
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        outs = greedy_batch(model, [enc[i] for i in idx], max_new_tokens, stops, tok.pad_id or 0)
        for i, o in zip(idx, outs):
            replies[i] = tok.decode(o, skip_special=True)
    model.train(was)
    return replies


def evaluate_heldout(model, tok, limit: int = 50, batch_size: int = 64, num_examples: int = 500) -> dict:
    """{"arith_em", "idiom_rougeL", "n_arith", "n_idiom", "samples"} on the held-out splits."""
    from llmlab.finetune.instruct.builders import grade_answer
    from llmlab.finetune.sft_data import to_messages

    arith, idiom = heldout_items("arith_en", limit, num_examples), heldout_items("idiom_zh", limit, num_examples)
    a_rep = answer(model, tok, [to_messages(r)[:-1] for r in arith], 24, batch_size)
    i_rep = answer(model, tok, [to_messages(r)[:-1] for r in idiom], 64, batch_size)
    em = sum(grade_answer(t, r["answer"]) for t, r in zip(a_rep, arith)) / max(len(arith), 1)
    rl = sum(rouge_l_cjk(r["reference"], t) for t, r in zip(i_rep, idiom)) / max(len(idiom), 1)
    return {"arith_em": em, "idiom_rougeL": rl, "n_arith": len(arith), "n_idiom": len(idiom),
            "samples": {"arith": [arith[0]["prompt"][0]["content"], a_rep[0]],
                        "idiom": [idiom[0]["messages"][0]["content"], i_rep[0]]}}
