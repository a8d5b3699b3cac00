"""Run a function on N local gloo processes (tests, benchmarks, `llmlab calc` checks) and collect
each rank's return value; `torchrun` does the same for the CLI. One thread per process: on a
2-core machine N processes already oversubscribe it."""
from __future__ import annotations

import os
import pickle
import socket
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch.distributed as dist

    from llmlab.device import setup_threads
    setup_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        # by value: a tensor sent as-is goes through a shared-memory fd that dies with this process
        queue.put((rank, "ok", pickle.dumps(fn(*args))))
    except BaseException:  # report, do not hang the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = 300.0) -> list:
    """fn(*args) on `world` gloo ranks (fn must be importable: a module-level function); returns
    the list of per-rank results, or raises RuntimeError with the first failing rank's traceback."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    import queue as queue_mod
    import time
    results, errors, got, deadline = [None] * world, [], 0, time.monotonic() + timeout
    try:
        while got < world and not errors:
            try:
                rank, status, value = queue.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    errors.append(f"rank {dead[0]} died (exit code {procs[dead[0]].exitcode})")
                elif time.monotonic() > deadline:
                    errors.append(f"timed out after {timeout:.0f} s")
                continue
            got += 1
            if status == "ok":
                results[rank] = pickle.loads(value)  # written by our own child process above
            else:
                errors.append(f"rank {rank}:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=5 if errors else timeout)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError(errors[0])
    return results
