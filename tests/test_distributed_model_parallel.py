"""Tensor parallel (manual Megatron f/g and DTensor parallelize_module), sequence parallel,
vocab-parallel embedding + cross-entropy, ring attention and pipeline parallel (GPipe, 1F1B) on 2
gloo processes against one process: same loss (1e-5), same gradients, same weights after AdamW."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

CFG = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
B, T, STEPS, LR = 4, 16, 3, 3e-3


def _model(**kw):
    from llmlab.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**CFG, **kw}))


def _batch():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, CFG["vocab_size"], (B, T + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def _train(loss_fn, params, steps=STEPS):
    opt = torch.optim.AdamW(params, lr=LR)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


def _worker():
    import torch.distributed as dist

    from llmlab.distributed.pipeline import pipeline_step, split_stages, stage_busy_seconds
    from llmlab.distributed.ring_attention import ring_attention
    from llmlab.distributed.tensor_parallel import TensorParallelLM
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _batch()
    out = {}
    for sp in (False, True):  # manual Megatron TP, then with sequence parallel
        tp = TensorParallelLM(_model(), sequence_parallel=sp)
        loss = tp(x, y)
        loss.backward()
        q = tp.model.model.layers[0].self_attn.inner.q_proj.weight
        out[f"tp{sp}"] = {"loss": float(loss), "q_grad": q.grad.clone(),
                          "emb_grad": tp.model.model.embed_tokens.weight.grad.clone()}
        tp.zero_grad()
        out[f"tp{sp}"]["losses"] = _train(lambda: tp(x, y), tp.parameters())
    # DTensor: torch's own Megatron-style plan
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    mesh = init_device_mesh("cpu", (world,))
    m = _model()
    for block in m.model.layers:
        parallelize_module(block, mesh, {"self_attn.q_proj": ColwiseParallel(), "self_attn.k_proj": ColwiseParallel(),
                                         "self_attn.v_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
                                         "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
                                         "mlp.down_proj": RowwiseParallel()})
        block.self_attn.n_heads //= world  # forward views the local heads
        block.self_attn.n_kv //= world
    out["dtensor"] = _train(lambda: m.loss(x, y), m.parameters())
    # ring attention over this rank's sequence chunk
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 4 * world, 8, generator=g) for _ in range(3))
    qs, ks, vs = (t.chunk(world, dim=2)[rank].clone().requires_grad_() for t in (q, k, v))
    o = ring_attention(qs, ks, vs)
    (o * (rank + 1)).sum().backward()
    out["ring"] = {"o": o.detach(), "grads": [t.grad for t in (qs, ks, vs)]}
    # pipeline: 2 stages, 4 micro-batches
    for sched in ("gpipe", "1f1b"):
        stage = split_stages(_model(tie_word_embeddings=False), rank, world)
        loss, wall = pipeline_step(stage, rank, world, x, y, micro_batches=4, schedule=sched)
        grads = {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}
        in_run = stage.busy_seconds  # clocked inside the step (forwards + backwards of this stage)
        busy = 4 * stage_busy_seconds(stage, x[:1], y[:1], CFG["hidden_size"])
        out[sched] = {"loss": None if loss is None else float(loss), "busy": busy, "wall": wall, "grads": grads,
                      "in_run": in_run}
    # the bubble prediction's measured inputs: one p2p transfer, the runtime's time per micro-batch
    from llmlab.distributed.pipeline import p2p_seconds, schedule_overhead_seconds
    out["p2p"] = p2p_seconds((1, 8, CFG["hidden_size"]), rank, repeats=3)
    solo = [dist.new_group([r]) for r in range(world)][rank]
    out["overhead"] = schedule_overhead_seconds(_model(tie_word_embeddings=False), x, y, 4, "1f1b", solo, steps=1)
    return out


@pytest.mark.slow  # 2 processes, ~40 s on a loaded 2-core machine
def test_model_parallel_modes_match_one_process():
    from llmlab.calc.pipeline import bubble_fraction, measured_bubble
    from llmlab.distributed.launch import spawn
    r = spawn(_worker, 2)
    x, y = _batch()
    full = _model()
    loss = full.loss(x, y)
    loss.backward()
    qg, eg = full.model.layers[0].self_attn.q_proj.weight.grad, full.model.embed_tokens.weight.grad
    full.zero_grad()
    ref_losses = _train(lambda: full.loss(x, y), full.parameters())
    for key in ("tpFalse", "tpTrue"):
        for rank in (0, 1):
            got = r[rank][key]
            assert abs(got["loss"] - float(loss)) < 1e-5, (key, got["loss"], float(loss))
            assert torch.allclose(got["q_grad"], qg.chunk(2, 0)[rank], atol=1e-6), key
            assert torch.allclose(got["emb_grad"], eg.chunk(2, 0)[rank], atol=1e-6), key
            assert max(abs(a - b) for a, b in zip(got["losses"], ref_losses)) < 1e-5, (key, got["losses"], ref_losses)
    assert max(abs(a - b) for a, b in zip(r[0]["dtensor"], ref_losses)) < 1e-5, (r[0]["dtensor"], ref_losses)
    assert ref_losses[-1] < ref_losses[0]

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 8, 8, generator=g).requires_grad_() for _ in range(3))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    (o * torch.cat([torch.ones(4), 2 * torch.ones(4)]).view(1, 1, 8, 1)).sum().backward()
    for rank in (0, 1):
        assert torch.allclose(r[rank]["ring"]["o"], o.detach().chunk(2, 2)[rank], atol=1e-5)
        for got, t in zip(r[rank]["ring"]["grads"], (q, k, v)):
            assert torch.allclose(got, t.grad.chunk(2, 2)[rank], atol=1e-5)

    untied = _model(tie_word_embeddings=False)
    ref = untied.loss(x, y)
    ref.backward()
    grads = dict(untied.named_parameters())
    for sched in ("gpipe", "1f1b"):
        assert abs(r[1][sched]["loss"] - float(ref)) < 1e-5, (sched, r[1][sched]["loss"], float(ref))
        g0 = r[0][sched]["grads"]["layers.0.mlp.down_proj.weight"]
        assert torch.allclose(g0, grads["model.layers.0.mlp.down_proj.weight"].grad, atol=1e-6)
        g1 = r[1][sched]["grads"]["head.weight"]
        assert torch.allclose(g1, grads["lm_head.weight"].grad, atol=1e-6)
        bubble = measured_bubble([r[k][sched]["busy"] for k in (0, 1)], max(r[k][sched]["wall"] for k in (0, 1)))
        assert 0 < bubble < 1 and bubble_fraction(2, 4) == 0.2
        for k in (0, 1):  # the in-run clock: some compute, and less than the step it ran in
            assert 0 < r[k][sched]["in_run"] < r[k][sched]["wall"], (sched, k, r[k][sched])
            assert 0 < measured_bubble([r[k][sched]["in_run"]], r[k][sched]["wall"]) < 1
    for k in (0, 1):
        assert 0 < r[k]["p2p"] < 1 and 0 < r[k]["overhead"] < r[k]["1f1b"]["wall"], (r[k]["p2p"], r[k]["overhead"])
