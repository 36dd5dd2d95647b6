"""Small threading helpers so decoding and writing overlap with the model.

PyAV, PIL, OpenCV and numpy release the GIL in their heavy parts, so a reader thread and
pools of writing threads run alongside torch. Queues are bounded, so memory stays bounded
too; an exception in a worker is re-raised in the caller's thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # macOS and Windows have no affinity call


def spare_cores(limit: int = 4) -> int:
    """Threads for side work (drawing, flow, image decoding): the usable cores but one, which
    the model and the decoder keep, at least 1 and at most ``limit``."""
    return max(1, min(limit, usable_cores() - 1))


def resolved(value: T | Future[T]) -> T:
    """A value that may still be a ``Future``, waiting for it if it is."""
    return value.result() if isinstance(value, Future) else value


class Prefetcher(Generic[T]):
    """Iterates ``source`` in a background thread, at most ``depth`` items ahead."""

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "ovseg-reader") -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer's thread
            self._error = exc
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:  # a generator stopped early: its finally releases its pools
                try:
                    close()
                except BaseException as exc:
                    self._error = self._error or exc
            self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration  # closed by the consumer
        item = self._queue.get()
        if item is _DONE:
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread early (the consumer gave up)."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)


class OrderedPool(Generic[T, R]):
    """Runs ``work`` on items in a pool of ``workers`` threads and hands each result to
    ``sink`` in one more thread, in the order the items came; at most ``depth`` items are in
    flight, so memory stays bounded whatever the length of the stream.

    For per-frame work that is independent (an overlay, a PNG) followed by work that needs
    the frames in order (an encoder, an export). The first error is re-raised in the
    caller's thread; the items after it are dropped, never handed to ``sink``.
    """

    def __init__(
        self,
        work: Callable[[T], R],
        sink: Callable[[R], None],
        workers: int = 2,
        depth: int = 8,
        name: str = "ovseg-writer",
    ) -> None:
        self._work, self._sink = work, sink
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
        self._futures: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"{name}-sink", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            future = self._futures.get()
            if future is _DONE:
                return
            assert isinstance(future, Future)
            if self._error is not None:
                future.cancel()
                continue
            try:
                self._sink(future.result())
            except BaseException as exc:
                self._error = exc  # keep draining so the producer never blocks

    def submit(self, item: T) -> None:
        """Start ``work`` on an item (blocks while ``depth`` are in flight); raises the
        pool's first error if there was one."""
        if self._error is not None:
            raise self._error
        self._futures.put(self._pool.submit(self._work, item))

    def finish(self) -> None:
        """Wait until every item went through ``sink``; raises the first error if any."""
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Let the items in flight finish and end the threads, without raising."""
        if self._thread.is_alive():
            self._futures.put(_DONE)
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
