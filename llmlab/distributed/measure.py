"""Measure what llmlab.calc predicts: bytes each collective sends (a counting wrapper around the
torch.distributed calls and a DDP comm hook) and peak bytes allocated during a step (the CPU
allocation events of torch.profiler)."""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.distributed as dist

from llmlab.calc.comm import collective_bytes

# torch.distributed function -> (collective kind, which argument holds the full-size tensor)
_WRAPPED = {"all_reduce": ("all_reduce", "in"), "all_gather_into_tensor": ("all_gather", "out"),
            "all_gather_single": ("all_gather", "out"), "reduce_scatter_tensor": ("reduce_scatter", "in"),
            "reduce_scatter_single": ("reduce_scatter", "in"), "broadcast": ("broadcast", "in")}


class CommCounter:
    """Within `with CommCounter() as c:`, every wrapped collective adds to c.bytes the bytes this
    rank sends under the ring algorithm (llmlab.calc.comm.collective_bytes); c.calls lists them."""

    def __init__(self):
        self.bytes, self.calls, self._saved = 0.0, [], {}

    def add(self, kind: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        self.calls.append((kind, nbytes))
        self.bytes += collective_bytes(kind, nbytes, dist.get_world_size())

    def _wrap(self, name, kind, which):
        orig = getattr(dist, name)

        names = list(inspect.signature(orig).parameters)
        # the full-size tensor: the output of an all-gather, the input of a reduce-scatter, else the tensor
        pos = 0 if which == "out" or not name.startswith("reduce_scatter") else 1

        def wrapped(*args, **kw):
            bound = dict(zip(names, args), **kw)
            self.add(kind, bound[names[pos]])
            return orig(*args, **kw)
        return wrapped

    def __enter__(self):
        for name, (kind, which) in _WRAPPED.items():
            self._saved[name] = getattr(dist, name)
            setattr(dist, name, self._wrap(name, kind, which))
        return self

    def __exit__(self, *exc):
        for name, f in self._saved.items():
            setattr(dist, name, f)

    def ddp_hook(self):
        """A DDP comm hook (DDP's reducer calls the process group from C++, past the wrapper)."""
        def hook(state, bucket):
            t = bucket.buffer()  # counted by the dist.all_reduce wrapper while the counter is active
            fut = dist.all_reduce(t.div_(dist.get_world_size()), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])
        return hook


def peak_bytes(fn) -> tuple[int, object]:
    """(peak of (allocated - freed) bytes during fn(), fn's result), from the profiler's CPU
    allocation events in time order; memory live before fn() is not included."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = best = 0
    for e in events:
        cur += e.nbytes()
        best = max(best, cur)
    return best, out


def live_bytes(*collections) -> int:
    """Bytes of distinct tensor storages (DTensors: the local shard) across the given iterables."""
    seen = {}
    for coll in collections:
        for t in coll:
            if t is None:
                continue
            t = t.to_local() if hasattr(t, "to_local") else t
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def quiet_warnings():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
