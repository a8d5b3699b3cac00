"""`llmlab train strategy=cp` (context parallel: ring attention over sequence chunks) and
`strategy=ep` (expert-parallel MoE + data parallel) on 2 gloo ranks under torchrun, against one
process on the same global batch: the same loss trajectory and final weights (fp32, 1e-5; only the
order of sums differs), the rank-0 HF model dir holding the whole model."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmlab.checkpoint import load_tensors

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_data_parallel import TOL, _losses, _run  # noqa: E402

ARGS = ["max_length=32", "gradient_accumulation_steps=2", "max_steps=3", "eval_batches=2", "warmup_steps=1",
        "learning_rate=3e-3", "logging_steps=1", "disable_tqdm=true", "report_to=jsonl", "peak_flops=1e9",
        "spike_guard=off", "save_total_limit=0", "save_steps=0"]


def _compare(tmp_path, model_args, one_batch, two_batch, strategy, weight_tol=TOL):
    from test_train_resume import make_shards
    data = make_shards(tmp_path)
    args = [f"data={data}", *model_args, *ARGS]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "llmlab.cli", "train", *args, f"per_device_train_batch_size={one_batch}",
          f"output_dir={one}", "fused_cross_entropy=false"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llmlab.cli",
          "train", *args, f"per_device_train_batch_size={two_batch}", f"strategy={strategy}", f"output_dir={two}"])
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 3 and l1[-1] < l1[0], (l1, l2)
    assert max(abs(a - b) for a, b in zip(l1, l2)) < TOL, (l1, l2)
    w1, w2 = load_tensors(one / "model" / "model.safetensors"), load_tensors(two / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert diff < weight_tol, diff
    return w1


@pytest.mark.slow  # 1 process + torchrun with 2: ~40 s loaded
def test_train_context_parallel_equals_one_process(tmp_path):
    # both sides train on the same 4 windows per micro-batch; cp splits each window over the ranks
    # Weights to 5e-5: the ring merges block softmaxes by log-sum-exp (another order of fp32 sums),
    # and Adam's first steps move a weight by ~lr whatever its gradient's size, so ~1e-7 gradient
    # differences on near-zero gradients show as ~1e-5; one step moves weights by up to 3e-3.
    _compare(tmp_path, ["depth=2"], 4, 4, "cp", weight_tol=5e-5)


@pytest.mark.slow  # 1 process + torchrun with 2: ~40 s loaded
def test_train_expert_parallel_equals_one_process(tmp_path):
    # Mixtral design (8 experts, top-2, Switch aux loss 0.01): 4 windows in one process = 2 per rank
    w = _compare(tmp_path, ["preset=mixtral", "depth=1"], 4, 2, "ep")
    assert w["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 8  # all experts gathered


def test_cp_and_ep_refuse_what_they_do_not_cover():  # fast: no process group
    from llmlab.distributed.context_parallel import check
    from llmlab.distributed.loop import _wrap
    from llmlab.errors import UserError
    from llmlab.model import Transformer
    from llmlab.model.config import ModelConfig
    from llmlab.train.config import TrainConfig
    from llmlab.train.distributed import DistInfo
    tiny = dict(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(UserError, match="sliding_window=8"):
        check(ModelConfig(**tiny, sliding_window=8), 2, 32)
    with pytest.raises(UserError, match="max_length 33 does not divide over 2"):
        check(ModelConfig(**tiny), 2, 33)
    with pytest.raises(UserError, match="position=alibi"):
        check(ModelConfig(**tiny, position="alibi"), 2, 32)
    for s in ("cp", "ep"):
        with pytest.raises(UserError, match=f"strategy={s} splits over ranks"):
            _wrap(Transformer(ModelConfig(**tiny)), TrainConfig(strategy=s), DistInfo())
