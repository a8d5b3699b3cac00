"""Expert parallel (llmlab/distributed/expert_parallel.py) on 2 gloo processes against one process:
each rank holds half the experts and half the batch; outputs, loss, every gradient and the weights
after AdamW steps equal the one-process MoE model's."""
from __future__ import annotations

import pytest
import torch

CFG = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=32, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.0,
           router_z_loss_coef=1e-3)
B, T, STEPS = 4, 8, 3


def _model(**kw):
    from llmlab.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**CFG, **kw}))


def _batch():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, CFG["vocab_size"], (B, T + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def _expert_rows(name, p, rank, world, E):
    """The slice of a full-model parameter that rank `rank` holds (experts split by rank)."""
    if ".experts." in name:
        n = E // world
        return p[rank * n:(rank + 1) * n]
    return p


def _worker(extra):
    import torch.distributed as dist

    from llmlab.distributed.expert_parallel import expert_parallel, sync_gradients
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _batch()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    m = expert_parallel(_model(**extra))
    from llmlab.errors import UserError
    try:
        expert_parallel(_model(num_local_experts=3, num_experts_per_tok=1))
        refused = ""
    except UserError as e:
        refused = str(e)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses, first_grads = [], None
    for _ in range(STEPS):
        loss = m.loss(xs, ys)
        loss.backward()
        sync_gradients(m)
        if first_grads is None:
            first_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        opt.step()
        opt.zero_grad()
        t = loss.detach().clone()
        dist.all_reduce(t)
        losses.append(float(t) / world)
    return {"refused": refused, "losses": losses, "grads": first_grads, "weights": {n: p.detach().clone() for n, p in m.named_parameters()}}


@pytest.mark.slow  # 2 processes
@pytest.mark.parametrize("extra", [{}, {"n_shared_experts": 1, "router_order": "topk_softmax"}])
def test_expert_parallel_equals_one_process(extra):
    from llmlab.distributed.launch import spawn
    results = spawn(_worker, 2, extra)
    m = _model(**extra)
    x, y = _batch()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses, grads = [], None
    for _ in range(STEPS):
        loss = m.loss(x, y)
        loss.backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    E = CFG["num_local_experts"]
    for rank, r in enumerate(results):
        assert "3 experts do not divide over 2 ranks" in r["refused"]
        assert r["losses"] == pytest.approx(losses, abs=1e-5)
        for n, p in m.named_parameters():
            torch.testing.assert_close(r["grads"][n], _expert_rows(n, grads[n], rank, 2, E), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(r["weights"][n], _expert_rows(n, p.detach(), rank, 2, E), atol=1e-5, rtol=1e-4)


def test_expert_parallel_refuses_dense_and_is_the_layer_on_one_rank():
    import torch.distributed as dist

    from llmlab.distributed.expert_parallel import expert_parallel
    from llmlab.distributed.launch import _free_port
    from llmlab.errors import UserError
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(UserError, match="MoE model"):
            expert_parallel(_model(num_local_experts=0))
        m = expert_parallel(_model(num_local_experts=3, num_experts_per_tok=1))  # 3 experts over 1 rank: fine
        x, y = _batch()
        torch.testing.assert_close(m(x), _model(num_local_experts=3, num_experts_per_tok=1)(x))
    finally:
        dist.destroy_process_group()
