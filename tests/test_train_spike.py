"""Loss-spike guard: an injected garbage batch is skipped, or rolled back past, exactly."""
from __future__ import annotations

import json
import math

import pytest
import torch

from llmlab.train import TrainConfig, train
from llmlab.train.spike import SpikeGuard

from test_train_trainer import TOKENS, tiny_model


class ListLoader:
    """Resumable loader over a fixed list of batches."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]


def batches(n=30, bad=None):
    out = []
    for i in range(n):
        w = TOKENS[(i % 20) * 128:(i % 20) * 128 + 4 * 33].view(4, 33)
        out.append((w[:, :-1], w[:, 1:]))
    if bad is not None:  # random bytes followed by NUL bytes: far off anything the model has learnt
        g = torch.Generator().manual_seed(0)
        out[bad] = (torch.randint(0, 256, (4, 32), generator=g), torch.zeros(4, 32, dtype=torch.long))
    return out


def cfg(tmp_path, **kw):
    return TrainConfig(**{**dict(output_dir=str(tmp_path), max_steps=20, max_length=32, per_device_train_batch_size=4,
                                 learning_rate=1e-2, warmup_steps=2, logging_steps=1, disable_tqdm=True,
                                 report_to=["jsonl"], peak_flops=1e9, spike_threshold=3.0, spike_min_steps=6,
                                 spike_window=10), **kw})


def test_guard_statistics():
    g = SpikeGuard(threshold=3.0, window=10, min_steps=3)
    for x in (2.0, 2.1, 1.9, 2.0):
        assert not g.is_spike(x)
        g.update(x)
    assert g.is_spike(float("nan")) and g.is_spike(10.0) and not g.is_spike(2.05)
    g2 = SpikeGuard()
    g2.load_state_dict(g.state_dict())
    assert g2.state_dict() == g.state_dict()


def test_skip_equals_training_without_the_bad_batch(tmp_path):
    data = batches(bad=16)
    a, b = tiny_model(), tiny_model()
    res = train(cfg(tmp_path / "a", spike_guard="skip"), a, ListLoader(data), None)
    train(cfg(tmp_path / "b", spike_guard="skip"), b, ListLoader(data[:16] + data[17:]), None)
    assert res.spikes == 1 and res.step == 20
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    spikes = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
              if '"spike"' in x]
    assert len(spikes) == 1 and spikes[0]["step"] == 16 and spikes[0]["loss"] > spikes[0]["mean"] + 1


def test_rollback_restores_last_checkpoint_and_moves_past_the_data(tmp_path):
    data = batches(bad=16)
    a, c = tiny_model(), tiny_model()
    res = train(cfg(tmp_path / "a", spike_guard="rollback", save_steps=12, spike_skip_batches=0), a,
                ListLoader(data), None)
    assert res.rollbacks == 1 and res.step == 20
    # after the spike at step 16 the run restarts from checkpoint-12 and reads on from batch 17
    train(cfg(tmp_path / "c", spike_guard="rollback", save_steps=12), c, ListLoader(data[:12] + data[17:]), None)
    for (k, x), y in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(x, y), k
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["action"] for r in recs if r["kind"] == "spike"] == ["rollback to checkpoint-12"]
    assert math.isfinite(res.train_loss)


def test_persistent_divergence_stops_with_an_error(tmp_path):
    from llmlab.errors import UserError
    data = batches(40)
    for i in range(16, 40):
        data[i] = batches(bad=0)[0]
    with pytest.raises(UserError, match="spikes in a row"):
        train(cfg(tmp_path, spike_guard="skip", max_spikes=3, max_steps=30), tiny_model(), ListLoader(data), None)
