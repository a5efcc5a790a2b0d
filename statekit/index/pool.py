"""Work on many files in a pool of processes, results in the order asked.

``rebuild`` and ``verify`` parse every episode file; on a machine with more
than one core the parsing runs in forked processes (the parent only writes
rows), in chunks, with a bounded number in flight so memory stays flat
however large the store. The results come back in the order of the items,
so a pooled run gives the same rows, row for row, as one process does.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

POOL_MIN_ITEMS = 4000
"""Fewer items than this are done in this process (forking costs more)."""

CHUNK = 256
"""Items per task sent to a worker."""

_work: Callable[[Any], Any] | None = None
"""The function a forked worker runs (inherited from the parent at fork)."""


def workers_for(n_items: int, workers: int | None = None) -> int:
    """How many processes to use for ``n_items`` (``workers``: asked for; None: the cores, if worth it)."""
    if workers is not None:
        return max(1, workers)
    if n_items < POOL_MIN_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      8))


def _run_chunk(items: Sequence[Any]) -> list[Any]:
    assert _work is not None
    return [_work(item) for item in items]


def ordered_map(work: Callable[[T], R], items: Sequence[T], workers: int, *, eager: bool = False) -> Iterator[R]:
    """``work(item)`` for each item, in order; in ``workers`` forked processes
    when more than one (``work`` may be a closure: the workers inherit it).
    ``eager``: every item is handed out at the first ``next`` (the workers then go on
    while the caller does other work; the results wait in memory), else a few chunks ahead."""
    global _work
    if workers <= 1:
        for item in items:
            yield work(item)
        return
    _work = work
    context = multiprocessing.get_context("fork")
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending: deque[Future[list[R]]] = deque()
            ahead = len(chunks) + 1 if eager else workers * 3  # in flight: every worker busy, memory bounded
            for chunk in chunks:
                pending.append(pool.submit(_run_chunk, chunk))
                if len(pending) >= ahead:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
    finally:
        _work = None
