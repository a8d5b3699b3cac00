"""Dynamic batching (a batch forms, runs to its end, then the next) beside continuous batching:
the same tokens per request, a later request joins only after the running batch ends."""
from __future__ import annotations

import pytest

from llmlab.infer.engine import Engine, EngineConfig
from llmlab.infer.request import WAITING
from llmlab.infer.sampling import SamplingParams


def _run(tiny, mode):
    """Two requests start together; a third arrives after 2 steps. -> (ids per request, step at
    which each request finished, the third's status right after it arrived + 1 step)."""
    eng = Engine(tiny, None, num_blocks=64, max_num_seqs=4, batching=mode)
    p = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (3, 9, 4)]
    ids = {eng.add_request([5, 6, 7, 8], p[0], "a"): [], eng.add_request([9, 10] * 5, p[1], "b"): []}
    done, step, third_status = {}, 0, None
    while eng.has_work() or step < 2:
        if step == 2:
            ids[eng.add_request([11, 12, 13], p[2], "c")] = []
        for o in eng.step():
            if o.token_id is not None:
                ids[o.request_id].append(o.token_id)
            if o.finish_reason:
                done[o.request_id] = step
        if step == 2:
            third_status = eng.requests["c"].seqs[0].status
        step += 1
    return ids, done, third_status


def test_dynamic_batch_runs_to_its_end_before_the_next(tiny):
    cont_ids, cont_done, cont_third = _run(tiny, "continuous")
    dyn_ids, dyn_done, dyn_third = _run(tiny, "dynamic")
    assert dyn_ids == cont_ids  # each request's tokens do not depend on the batching mode
    assert [len(v) for v in dyn_ids.values()] == [3, 9, 4]
    assert cont_third != WAITING and dyn_third == WAITING  # continuous admits it at once
    assert dyn_done["c"] > dyn_done["b"] > cont_done["c"]  # dynamic: c starts only after b ends
    assert dyn_done["a"] == cont_done["a"] and dyn_done["b"] == cont_done["b"]


def test_bad_batching_mode():
    with pytest.raises(ValueError, match="batching"):
        EngineConfig(batching="static")
