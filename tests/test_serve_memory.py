"""The serving engine's native memory stays bounded: oneDNN and ideep keep a cached primitive (and
its memory) per GEMM shape, so the engine must only ever run its packed GEMMs on a bounded set of
row counts (`llmlab.infer.runner.bucket_rows`). Without that, every new mix of prompt lengths
grew a server's RSS for as long as it ran (docs/serve.md, "Soak")."""
from __future__ import annotations

import random

import pytest
import torch

from llmlab.infer import fused as fused_mod
from llmlab.infer.engine import Engine
from llmlab.infer.runner import bucket_rows
from llmlab.infer.sampling import SamplingParams
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def test_bucket_rows_is_bounded_and_cheap():
    sizes = {bucket_rows(n) for n in range(1, 1025)}
    assert len(sizes) == 64 and max(sizes) == 1024
    for n in range(1, 5000):
        b = bucket_rows(n)
        assert b >= n and (b - n) / n <= 0.125, n  # at most 12.5 % padding rows
        assert bucket_rows(b) == b  # a bucket is its own bucket
    assert [bucket_rows(n) for n in (16, 17, 18, 19, 33, 100, 1000)] == [16, 18, 18, 20, 36, 104, 1024]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_engine_runs_packed_gemms_on_bucketed_row_counts_only(monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    eng = Engine(Transformer(cfg).eval(), None, num_blocks=128, max_num_seqs=8)
    if not eng.runner.packed:
        pytest.skip("packed weights not row-invariant on this CPU: MKL path (no per-shape cache)")
    rows: set[int] = set()
    lin = fused_mod._lin

    def recording(x, w, b):
        if type(w) is fused_mod.Packed:
            rows.add(x.shape[0])
        return lin(x, w, b)
    monkeypatch.setattr(fused_mod, "_lin", recording)
    rng = random.Random(0)
    for i in range(48):  # prompt lengths 1..120, up to 8 at a time, some with every position's logits
        eng.add_request([rng.randrange(3, 300) for _ in range(rng.randint(1, 120))],
                        SamplingParams(max_new_tokens=rng.randint(1, 4), temperature=0.0),
                        prompt_logprobs=1 if i % 5 == 0 else None)
        while len(eng.requests) >= 8 or (i == 47 and eng.has_work()):
            eng.step()
    allowed = {max(bucket_rows(n), eng.runner.padded_rows(1)) for n in range(1, 1025)}
    assert rows and rows <= allowed, sorted(rows - allowed)
    assert len(rows) > 10  # the load did reach many row counts
