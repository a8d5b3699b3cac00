"""llama.cpp as `benchmarks/inference.py`'s peer (`benchmarks/_inference_llamacpp.py`): skipped where
llama-cpp-python is not importable (it is not a dependency: `benchmarks/install_llama_cpp.sh DIR`
builds it once, then PYTHONPATH=DIR). Checks that the peer decodes our packaged GGUF greedily to the
same tokens as ours (llama.cpp rounds activations to 8 bits, so only a prompt without near ties is
used) and that its step timer measures a step."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

# loaded by path: benchmarks/ must not go on sys.path at collection, where its peft.py would shadow
# the real peft for every test module collected after this one (transformers imports peft)
_spec = importlib.util.spec_from_file_location(
    "_inference_llamacpp", Path(__file__).resolve().parents[1] / "benchmarks" / "_inference_llamacpp.py")
lcp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lcp)


def test_greedy_agreement_counts_the_shared_prefix():
    assert lcp.greedy_agreement([1, 2, 3], [1, 2, 3]) == 3
    assert lcp.greedy_agreement([1, 2, 3], [1, 5, 3]) == 1
    assert lcp.greedy_agreement([], [1]) == 0


def test_peer_decodes_our_gguf_like_ours(smollm2, smollm2_path, smollm2_tokenizer):
    pytest.importorskip("llama_cpp")
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    prompt = smollm2_tokenizer.encode("The capital of France is")
    ours = list(generate_ids(smollm2, prompt, SamplingParams(max_new_tokens=6)))
    peer = lcp.Peer(smollm2_path, threads=1, n_ctx=256)
    got = peer.generate(prompt, 6)
    assert len(got) == 6
    assert lcp.greedy_agreement(ours, got) >= 4, (ours, got)
    s = peer.step_s(3)
    assert 0 < s < 10 and math.isfinite(s)
