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

def workers_for(n_items: int, workers: int | None = None) -> int:
    """How many processes to use for ``n_items`` (``workers``: asked for; None: the cores, if worth it)."""
    if workers is not None:
        return max(1, workers)
    if n_items < POOL_MIN_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      8))


def ordered_map(work: Callable[[T], R], items: Sequence[T], workers: int, *, eager: bool = False) -> Iterator[R]:
    """``work(item)`` for each item, in order; in ``workers`` forked processes
    when more than one (``work`` may be a closure: the workers inherit it), a chunk
    of items a task (``ordered_chunks``). ``eager``: every item is handed out at the
    first ``next`` (the workers then go on while the caller does other work; the
    results wait in memory), else a few chunks ahead."""
    if workers <= 1:
        yield from map(work, items)
        return
    for results in ordered_chunks(lambda chunk: [work(item) for item in chunk], items, workers, eager=eager):
        yield from results


class Turns:
    """The chunks' turns, in the chunks' order, at something only one process may
    use at a time (a rebuild's workers writing their rows into one SQLite file):
    made before the fork, shared by the workers."""

    WAIT_S = 1.0
    """How often a waiting worker looks whether the process that forked it is gone."""

    def __init__(self, context: Any) -> None:
        self._changed = context.Condition()
        self._next = context.Value("q", 0, lock=False)  # the chunk whose turn it is (guarded by ``_changed``)
        self._parent = os.getpid()

    def wait(self, k: int) -> None:
        """Until chunk ``k``'s turn (every chunk before it has passed its turn)."""
        with self._changed:
            while self._next.value != k:
                self._changed.wait(self.WAIT_S)
                if self._next.value != k and os.getppid() != self._parent:  # orphaned: nothing will come
                    raise RuntimeError("the process that started this worker is gone")

    def passed(self, k: int) -> None:
        """Chunk ``k`` is done with its turn: the next chunk's begins."""
        with self._changed:
            self._next.value = k + 1
            self._changed.notify_all()


_prepare: Callable[[Any], Any] | None = None
_finish: Callable[[Any], Any] | None = None
_turns: Turns | None = None
"""What ``ordered_chunks``' forked workers run (inherited at fork), and their turns."""


def _run_turn(k: int, chunk: Sequence[Any]) -> Any:
    assert _prepare is not None and _finish is not None and _turns is not None
    try:
        prepared, failure = _prepare(chunk), None
    except BaseException as exc:  # the turn is taken and passed all the same (the next chunks wait for it)
        prepared, failure = None, exc
    _turns.wait(k)
    try:
        if failure is not None:
            raise failure
        return _finish(prepared)
    finally:
        _turns.passed(k)


def _run_prepare(chunk: Sequence[Any]) -> Any:
    assert _prepare is not None
    return _prepare(chunk)


def ordered_chunks(prepare: Callable[[Sequence[T]], Any], items: Sequence[T], workers: int,
                   finish: Callable[[Any], R] | None = None, *, size: int = CHUNK, eager: bool = False
                   ) -> Iterator[Any]:
    """``prepare(chunk)`` for each chunk of ``size`` items, in ``workers`` forked processes when
    more than one (a closure: the workers inherit it), then ``finish(prepared)`` in the same
    process, one chunk at a time in the chunks' order (``Turns``: the next chunk's ``finish``
    waits for this one's, a failed ``prepare`` passes its turn); the results of ``finish`` (or of
    ``prepare`` without one) in the chunks' order. In one process: each in turn, here.
    ``eager``: every chunk is handed out at the first ``next``, else a few ahead (memory bounded)."""
    global _prepare, _finish, _turns
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if workers <= 1:
        for chunk in chunks:
            prepared = prepare(chunk)
            yield prepared if finish is None else finish(prepared)
        return
    context = multiprocessing.get_context("fork")
    _prepare, _finish = prepare, finish
    _turns = Turns(context) if finish is not None else None
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending: deque[Future[Any]] = deque()
            ahead = len(chunks) + 1 if eager else workers * 3  # in flight: every worker busy, memory bounded
            for k, chunk in enumerate(chunks):  # submitted in order: chunk k is taken before chunk k + 1
                pending.append(pool.submit(_run_turn, k, chunk) if finish is not None
                               else pool.submit(_run_prepare, chunk))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        _prepare = _finish = _turns = None
