"""Process-group re-formation as a surviving rank does it in-process, against a restart.

`world` ranks (one per GPU for NCCL) start as new processes and form a group through a
TCPStore this process hosts; the time from each one's spawn to its first all-reduce is what a
restart costs at least (interpreter, torch, CUDA context, communicator). Then, with
world >= 2, the last rank is SIGKILLed and the others form a new group without it; with one
rank, that rank re-forms alone (NCCL refuses two ranks on one GPU). A survivor's cost is
abort the old group + init the new one + its first all-reduce, timed from the moment the
parent has seen the victim die: detecting the loss is coordd's job and is not in it.
"""

from __future__ import annotations

import os
import time
import traceback
from datetime import timedelta

TIMEOUT = timedelta(seconds=90)


def _bind(rank: int, backend: str):
    import torch

    if backend != "nccl":
        return torch.device("cpu")
    torch.cuda.set_device(rank)
    return torch.device("cuda", rank)


def _form(store, generation: str, rank: int, world: int, backend: str, device) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, store=dist.PrefixStore(generation, store), rank=rank,
                            world_size=world, timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)


def _all_reduce(world: int, device) -> None:
    """One all-reduce, waited for, and checked: a group that formed but cannot reduce fails."""
    import torch
    import torch.distributed as dist

    t = torch.ones(1, device=device)
    dist.all_reduce(t)
    if t.item() != world:
        raise RuntimeError(f"all-reduce of ones over {world} ranks gave {t.item()}")


def _drop() -> None:
    """Abort rather than destroy: a survivor must not wait on a dead peer's communicator."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    abort = getattr(c10d, "_abort_process_group", None)
    try:
        if abort is None:
            raise NotImplementedError
        abort()
    except (NotImplementedError, RuntimeError, ValueError):
        dist.destroy_process_group()


def _rank(rank: int, world: int, backend: str, port: int, spawned_at: float, out) -> None:
    import torch.distributed as dist

    device = _bind(rank, backend)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    _form(store, "gen0", rank, world, backend, device)
    _all_reduce(world, device)
    out.send({"gen": 0, "rank": rank, "restart_s": time.time() - spawned_at})
    survivors = max(1, world - 1)
    if rank >= survivors:  # the victim: the parent SIGKILLs it before the wait ends
        store.wait(["never"])
        return
    store.wait(["go"])
    started = time.perf_counter()
    _drop()
    dropped = time.perf_counter()
    _form(store, "gen1", rank, survivors, backend, device)
    formed = time.perf_counter()
    _all_reduce(survivors, device)
    out.send({"gen": 1, "rank": rank, "abort_s": dropped - started, "init_s": formed - dropped,
             "allreduce_s": time.perf_counter() - formed})
    _drop()


def _worker(rank: int, world: int, backend: str, port: int, spawned_at: float, out) -> None:
    try:
        _rank(rank, world, backend, port, spawned_at, out)
    except Exception:  # noqa: BLE001 -- the parent reports it instead of waiting it out
        out.send({"rank": rank, "error": traceback.format_exc(limit=4)})


def _collect(pipes: list, count: int, deadline: float) -> list[dict]:
    """`count` answers from the ranks' pipes (one pipe each: a rank SIGKILLed while writing
    cannot leave a shared lock held, as a multiprocessing.Queue's would)."""
    from multiprocessing.connection import wait

    got: list[dict] = []
    while len(got) < count:
        if not pipes:
            raise RuntimeError(f"ranks exited with {len(got)} of {count} answers given")
        ready = wait(pipes, timeout=max(0.1, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"{len(got)} of {count} ranks answered in time")
        for conn in ready:
            try:
                item = conn.recv()
            except EOFError:
                pipes.remove(conn)  # that rank has exited; its answers are in
                continue
            if "error" in item:
                raise RuntimeError(f"rank {item['rank']} failed:\n{item['error']}")
            got.append(item)
    return got


def reform(backend: str, world: int, limit_s: float = 100.0) -> dict:
    """Start `world` ranks, kill the last (world >= 2), time the survivors' re-formation.

    Returns restart_s (slowest rank: spawn to first all-reduce), reform_s (slowest survivor:
    abort + init + first all-reduce) and that survivor's abort_s, init_s, allreduce_s.
    """
    import multiprocessing

    import torch.distributed as dist

    if backend == "nccl":  # its watchdog must not tear a survivor down for the dead peer
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    deadline = time.monotonic() + limit_s
    procs, pipes = [], []
    try:
        for rank in range(world):
            reader, writer = ctx.Pipe(duplex=False)
            procs.append(ctx.Process(target=_worker, daemon=True, args=(
                rank, world, backend, store.port, time.time(), writer)))
            procs[-1].start()
            writer.close()  # the rank holds the only writer: EOF once it exits
            pipes.append(reader)
        first = _collect(list(pipes), world, deadline)
        if world > 1:
            procs[-1].kill()
            procs[-1].join()
        store.set("go", "1")
        second = _collect(pipes[:max(1, world - 1)], max(1, world - 1), deadline)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    slowest = max(second, key=lambda r: r["abort_s"] + r["init_s"] + r["allreduce_s"])
    return {"restart_s": max(r["restart_s"] for r in first),
            "reform_s": slowest["abort_s"] + slowest["init_s"] + slowest["allreduce_s"],
            **{k: slowest[k] for k in ("abort_s", "init_s", "allreduce_s")}}
