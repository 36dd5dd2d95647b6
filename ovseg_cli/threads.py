"""Small threading helpers so decoding and writing overlap with the model.

PyAV, PIL and numpy release the GIL in their heavy parts, so a reader thread and a
writer thread run alongside torch. Queues are bounded, so memory stays bounded too;
an exception in a worker is re-raised in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


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


class BackgroundWorker(Generic[T]):
    """Feeds items to ``handle`` in one background thread, in order, ``depth`` items deep."""

    def __init__(
        self, handle: Callable[[T], None], depth: int = 4, name: str = "ovseg-writer"
    ) -> None:
        self._handle = handle
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._handle(item)  # type: ignore[arg-type]
                except BaseException as exc:
                    self._error = exc  # keep draining so the producer never blocks

    def submit(self, item: T) -> None:
        """Queue an item; raises the worker's error if it has failed."""
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> None:
        """Wait for all queued items; raises the worker's error if any."""
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Let the queued items finish and end the thread, without raising."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
