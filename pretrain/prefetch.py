"""Host work off the training loop's critical path, and fewer host-device synchronisations.

:class:`BatchStream` builds the training micro-batches (loader draw + objective collate, pinned
host memory on CUDA) for the coming ``(step, micro)`` positions in a background thread with a
bounded queue of ``depth`` micro-batches (``train.prefetch``; 0 builds them synchronously in the
loop, as before). Every batch is a pure function of its position -- the loader reads
``(epoch, index)`` and the objective collates with the generator seeded from
``(seed, step, micro, rank)`` -- so the batches, and hence the losses and weights, are identical
with and without prefetching, and the resume position stays the optimizer step of the last
*consumed* batch (batches built ahead of a stop are dropped and built again after the resume).

:class:`StopSync` decides when the ranks agree on a stop request (SIGTERM / Ctrl-C on any rank):
an all-reduce plus ``.item()`` is a host-device synchronisation, so it runs only every
``train.stop_sync_every`` steps and at the steps that synchronise anyway (log, eval, checkpoint,
last step). One process needs no agreement and stops at the step the signal arrives.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_DONE = object()


class BatchStream:
    """Micro-batches ``make(step, micro)`` for ``step`` in ``[start, end)``, ``micro`` in ``[0, accum)``.

    ``get(step, micro)`` must be called in that order. ``depth`` > 0 builds up to ``depth``
    micro-batches ahead in a daemon thread; an exception there is raised by the ``get`` that would
    have returned the batch. ``close()`` stops the thread (batches built ahead are discarded).
    """

    def __init__(self, make: Callable[[int, int], Any], start: int, end: int, accum: int, depth: int):
        self.make, self.start, self.end, self.accum, self.depth = make, start, end, accum, max(0, int(depth))
        self._next = (start, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.depth > 0 and start < end:
            self._q: queue.Queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
            self._thread.start()

    def _positions(self):
        for step in range(self.start, self.end):
            for micro in range(self.accum):
                yield step, micro

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for pos in self._positions():
                if self._stop.is_set() or not self._put((pos, self.make(*pos), None)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put((None, None, e))
            return
        self._put((None, _DONE, None))

    def get(self, step: int, micro: int) -> Any:
        if (step, micro) != self._next:
            raise RuntimeError(f"batch ({step}, {micro}) requested out of order; expected {self._next}")
        self._next = (step, micro + 1) if micro + 1 < self.accum else (step + 1, 0)
        if self._thread is None:
            return self.make(step, micro)
        pos, batch, err = self._q.get()
        if err is not None:
            self.close()
            raise err
        if pos != (step, micro):  # cannot happen: one producer, positions in order
            raise RuntimeError(f"prefetched batch {pos} != requested ({step}, {micro})")
        return batch

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StopSync:
    """Whether to stop after ``step``: the ranks' stop requests reduced only at sync points.

    ``reduce(local: bool) -> bool`` is the collective (any rank asked to stop); ``syncs`` counts its
    calls. With one process the local request is the answer and nothing is reduced.
    """

    def __init__(self, every: int, world: int, reduce: Callable[[bool], bool]):
        self.every, self.world, self.reduce = max(1, int(every)), int(world), reduce
        self.syncs = 0

    def is_sync_point(self, step: int, forced: bool) -> bool:
        return forced or step % self.every == 0

    def __call__(self, step: int, local: bool, forced: bool = False) -> bool:
        if self.world <= 1:
            return local
        if not self.is_sync_point(step, forced):
            return False
        self.syncs += 1
        return bool(self.reduce(local))
