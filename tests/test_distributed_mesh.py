"""DeviceMesh data x tensor parallel on 4 gloo processes (2 DP x 2 TP, manual Megatron TP inside
each row) against one process on the same global batch: same loss trajectory (1e-5)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_model_parallel import LR, STEPS, _batch, _model, _train  # noqa: E402


def _worker():
    from llmlab.distributed.mesh import average_gradients, data_tensor_mesh
    from llmlab.distributed.tensor_parallel import TensorParallelLM
    mesh = data_tensor_mesh(2, 2)
    tp_group, dp_group = mesh.get_group("tp"), mesh.get_group("dp")
    dp_rank = mesh.get_local_rank("dp")
    x, y = _batch()
    half = x.shape[0] // 2
    x, y = x[dp_rank * half:(dp_rank + 1) * half], y[dp_rank * half:(dp_rank + 1) * half]
    model = TensorParallelLM(_model(), group=tp_group)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = model(x, y)
        loss.backward()
        average_gradients(model.parameters(), dp_group)
        opt.step()
        opt.zero_grad()
        t = loss.detach().clone()
        torch.distributed.all_reduce(t, group=dp_group)
        losses.append(float(t) / 2)
    return losses


@pytest.mark.slow  # 4 processes on 2 cores: ~40 s
def test_data_x_tensor_mesh_matches_one_process():
    from llmlab.distributed.launch import spawn
    got = spawn(_worker, 4)
    x, y = _batch()
    m = _model()
    ref = _train(lambda: m.loss(x, y), m.parameters())
    for losses in got:
        assert max(abs(a - b) for a, b in zip(losses, ref)) < 1e-5, (losses, ref)
