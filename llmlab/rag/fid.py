"""Fusion-in-decoder (FiD; Izacard & Grave 2021, "Leveraging Passage Retrieval with Generative
Models for Open Domain Question Answering"), for a decoder-only model.

FiD reads each retrieved passage on its own and fuses them only where the answer is generated. In
the paper's encoder-decoder (T5) each "question + passage_i" is encoded separately and the decoder
cross-attends to the concatenation of all encoder outputs:

    h_i = Enc(q, p_i)   (i = 1..k, independent),     y_t ~ Dec(y_<t, [h_1; ...; h_k])

so the cost of reading grows linearly in k (not quadratically, as one long concatenated input) and
no passage is "far away" from the answer. A decoder-only model has no separate encoder; the same
structure is parallel context windows (llmlab.model.pcw): every passage window is encoded alone
(positions 0..len-1, attending only inside itself: its keys/values equal those of the passage run
alone, i.e. h_i), and the answer tokens attend to all windows and causally to themselves. Unlike
concatenation the result does not depend on the passages' order (the windows share positions):
`tests/test_rag_fid.py` checks both properties.

`fid_logits` runs the whole thing in one forward (the reference); `fid_generate` encodes the windows
and the task once into a KV cache (under the PCW mask) and then feeds one token per step: a new
answer token attends to every cached key, which is exactly the rule for task tokens above.
"""
from __future__ import annotations

from typing import Sequence

import torch

from llmlab.errors import UserError

WINDOW = "Passage: {passage}"  # the paper puts the question into every window too: "...{question}\n{passage}"
TASK = "\n\n{question}"


@torch.no_grad()
def fid_logits(model, tok, question: str, passages: Sequence[str], answer_ids: Sequence[int] = (),
               window: str = WINDOW, task: str = TASK) -> torch.Tensor:
    """Next-token logits (V,) after the fused passages, the task text and `answer_ids` so far."""
    from llmlab.model.pcw import pcw_logits
    windows, task_ids = _ids(tok, question, passages, window, task)
    return pcw_logits(model, windows, task_ids + list(answer_ids))[-1]


def _ids(tok, question, passages, window, task):
    if not passages:
        raise UserError("fusion-in-decoder needs at least one passage")
    return ([tok.encode(window.format(passage=p, question=question), allow_special=False) for p in passages],
            tok.encode(task.format(question=question), allow_special=False))


@torch.no_grad()
def fid_generate(model, tok, question: str, passages: Sequence[str], max_new_tokens: int = 12,
                 stop: Sequence[str] = ("\n",), window: str = WINDOW, task: str = TASK) -> str:
    """Greedy answer read over all passages at once (see the module docstring); the text before the
    first stop string."""
    from llmlab.model.kv_cache import KVCache
    from llmlab.model.pcw import pcw_inputs
    windows, task_ids = _ids(tok, question, passages, window, task)
    ids, pos, keep = pcw_inputs(windows, task_ids)
    dev = next(model.parameters()).device
    cache = KVCache.for_model(model, 1, ids.shape[1] + max_new_tokens)
    logits = model(ids.to(dev), cache=cache, attention_mask=keep.to(dev), position_ids=pos.to(dev), last_only=True)
    eos, nxt, out = getattr(tok, "eos_id", None), int(pos[-1]) + 1, []
    for step in range(max_new_tokens):
        t = int(logits[0, -1].argmax())
        if t == eos:
            break
        out.append(t)
        if any(s in tok.decode(out) for s in stop) or step == max_new_tokens - 1:
            break
        logits = model(torch.tensor([[t]], device=dev), cache=cache, position_ids=torch.tensor([nxt], device=dev))
        nxt += 1
    text = tok.decode(out)
    for s in stop:
        text = text.split(s, 1)[0]
    return text
