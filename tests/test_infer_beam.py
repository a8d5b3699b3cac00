"""Beam search against transformers' beam search on SmolLM2 (same hypotheses, same scores)."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.beam import beam_search
from llmlab.infer.paged import PagedKVCache
from llmlab.infer.runner import PagedRunner


@pytest.mark.slow  # loading transformers' SmolLM2 from GGUF dominates
@pytest.mark.parametrize("chat,early_stopping,length_penalty", [
    (False, False, 1.0), (True, True, 1.0), (True, False, 2.0), (True, "never", 0.5)])
def test_beam_search_matches_hf(smollm2, smollm2_tokenizer, hf_smollm2, chat, early_stopping, length_penalty):
    tok = smollm2_tokenizer
    if chat:  # short answers: hypotheses end on EOS at different lengths
        text = tok.apply_chat_template([{"role": "user", "content": "Capital of Italy? One word."}])
    else:
        text = "The best way to learn a language is"
    ids = tok.encode(text)
    hyps = beam_search(smollm2, ids, num_beams=3, max_new_tokens=10, length_penalty=length_penalty,
                       early_stopping=early_stopping, n_best=3, eos_ids={tok.eos_id})
    with torch.no_grad():
        o = hf_smollm2.generate(torch.tensor([ids]), num_beams=3, max_new_tokens=10, length_penalty=length_penalty,
                                early_stopping=early_stopping, num_return_sequences=3, do_sample=False,
                                eos_token_id=tok.eos_id, pad_token_id=tok.eos_id,
                                output_scores=True, return_dict_in_generate=True)
    ref = [[t for t in seq[len(ids):].tolist() if t != tok.eos_id] for seq in o.sequences]
    assert [h.tokens for h in hyps] == ref
    assert [h.score for h in hyps] == pytest.approx(o.sequences_scores.tolist(), abs=2e-3)


def test_beams_share_blocks_copy_on_write(smollm2, smollm2_tokenizer):
    cache = PagedKVCache.for_model(smollm2, 64)
    runner = PagedRunner(smollm2, cache)
    ids = smollm2_tokenizer.encode("A long prompt that fills more than one block of sixteen tokens, "
                                   "so that the beams share it")
    hyps = beam_search(smollm2, ids, num_beams=4, max_new_tokens=6, runner=runner, n_best=4)
    assert len(hyps) == 4 and len({tuple(h.tokens) for h in hyps}) == 4
    assert cache.alloc.num_free == 64  # every beam's blocks were returned
    with pytest.raises(ValueError):
        beam_search(smollm2, ids, num_beams=2, n_best=3)


def test_width_one_beam_is_greedy(smollm2, smollm2_tokenizer):
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    ids = smollm2_tokenizer.encode("Once upon a time")
    h = beam_search(smollm2, ids, num_beams=1, max_new_tokens=6, eos_ids={smollm2_tokenizer.eos_id})
    assert h[0].tokens == list(generate_ids(smollm2, ids, SamplingParams(6), {smollm2_tokenizer.eos_id}))
