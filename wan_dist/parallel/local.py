"""Run a function on N local processes joined in a gloo process group (tests, CPU benchmarks).

``run_local_group(fn, world_size, *args)`` spawns ``world_size`` processes, each calling
``fn(rank, world_size, *args)`` inside an initialised ``torch.distributed`` gloo group on 127.0.0.1,
and returns the per-rank results in rank order. A rank that raises fails the whole call with that
rank's traceback; a hang fails after ``timeout_s`` (collectives time out too, so a hang is an error).
``fn`` and its arguments must be picklable (a module-level function).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import socket
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_local_group", "free_port", "RankFailed"]


class RankFailed(RuntimeError):
    """A rank of a local group raised or did not finish; the message holds its traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results, threads: int,
           collective_timeout_s: float) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s))
        try:
            # pickled here, by value: a tensor put on the queue as it is travels as a shared-memory handle that
            # the parent opens through this process's resource sharer, which is gone if this process exits
            # before the parent reads it (seen on a loaded machine: FileNotFoundError in rebuild_storage_fd)
            results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent with its traceback
        results.put((rank, False, traceback.format_exc()))


def run_local_group(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 300,
                    threads: int = 1, collective_timeout_s: float = 60) -> list[Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_entry, args=(rank, world_size, port, fn, args, results, threads,
                                                      collective_timeout_s), daemon=True)
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        while len(collected) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue_module.Empty:
                raise RankFailed(f"local group of {world_size}: no result from ranks "
                                 f"{sorted(set(range(world_size)) - set(collected))} within {timeout_s} s") from None
            if not ok:
                raise RankFailed(f"rank {rank} of {world_size} failed:\n{value}")
            collected[rank] = pickle.loads(value)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return [collected[rank] for rank in range(world_size)]
