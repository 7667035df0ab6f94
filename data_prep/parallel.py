"""Ordered, bounded parallel map for ``prep --workers N``.

Tasks (runs of slices of one file) go to N worker processes; results come back **in task order**, so the parent
writes the shards and the manifest exactly as one worker would (the per-slice work is a pure function of file,
slice and configuration). At most ``window`` tasks are in flight (submitted, not yet consumed): memory stays at
about ``window`` tasks' rows whatever the number of files. Workers run torch single-threaded (N processes on N
cores); the parent only reads results and writes shards.

``workers == 1`` runs in this process (no pool, the caller's torch threads). The start method is the platform's
default (fork on Linux), ``spawn`` for CUDA devices (CUDA cannot be used after fork).
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from typing import Callable, Iterable, Iterator


def ordered_map(fn: Callable, tasks: Iterable, workers: int = 1, initializer: Callable | None = None,
                initargs: tuple = (), window: int | None = None, start_method: str | None = None) -> Iterator:
    """Yield ``fn(task)`` for each task, in order; ``initializer(*initargs)`` runs once per process (in this
    process when ``workers == 1``). An exception in a task is raised here; leaving the iterator early (or an
    exception in the consumer) terminates the workers."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        for t in tasks:
            yield fn(t)
        return
    window = window or 2 * workers
    ctx = mp.get_context(start_method)
    it = iter(tasks)
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:  # __exit__ terminates
        pending = deque(pool.apply_async(fn, (t,)) for _, t in zip(range(window), it))
        while pending:
            result = pending.popleft().get()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.apply_async(fn, (nxt,)))
            yield result


_END = object()
