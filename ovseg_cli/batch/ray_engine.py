"""The Ray engine of a batch (``--engine ray``; ``pip install 'ovseg[ray]'``).

One long-lived worker (a Ray actor) per GPU of the cluster, or per ``cpus_per_worker``
CPUs when the cluster has no GPU, loads the model and builds the text embeddings once.
The driver hands the videos out one at a time, longest first, to whichever worker is
free, so a long video does not wait behind short ones at the end; it alone polls the
workers' progress, writes the manifest and draws the bar. Each worker runs exactly what
the local engine runs (``batch.segment_item``), so the outputs are the same.

A worker that dies (killed, out of memory, its node lost) has its video's partial folder
removed by the driver (the folder's marker names the worker's process) and the video
handed to another worker, at most ``RETRIES`` more times; a replacement worker is started
in its place. Workers write straight into ``--out``, which every node must reach at the
same path (a shared file system), as they must the videos and the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ovseg_cli.batch.plan import (
    BatchItem,
    BatchPlan,
    Progress,
    VideoResult,
    describe_error,
    frames_written,
    output_state,
    segment_item,
)
from ovseg_cli.errors import STOP_SIGNALS, Interrupted, OvsegError, last_stop_signal
from ovseg_cli.outputs import remove_abandoned, writer_record

RETRIES = 2  # more tries for a video whose worker died (a video that fails is not retried)
DEFAULT_CPUS_PER_WORKER = 4
POLL_S = 0.25  # how often the driver asks the workers how far they are
STOP_WAIT_S = 30.0  # how long the driver waits for a killed worker to be reported dead


class SegmentWorker:
    """A Ray actor: the model and the vocabulary, loaded once, segmenting video after video."""

    def __init__(self, plan: BatchPlan, threads: int | None) -> None:
        self.plan, self.error = plan, None
        self.current: tuple[BatchItem | None, int] = (None, 0)  # the video now, frames done
        try:
            import torch

            from ovseg_cli.segment.loading import load_model

            if threads:
                torch.set_num_threads(threads)  # the CPUs Ray gave this worker
            self.model = load_model(plan.config)
            self.vocabulary = self.model.encode_vocabulary(plan.classes)
        except Exception as exc:  # reported by ready(): the driver stops with this message
            self.error = describe_error(exc)

    def ready(self) -> dict[str, Any]:
        """Who this worker is (its writer record), or why it could not load the model."""
        return {"error": self.error, "writer": writer_record()}

    def segment(self, item: BatchItem) -> VideoResult:
        """Segment one video into its folder (the local engine's code)."""
        self.current = (item, 0)

        def progress(_: BatchItem, count: int) -> None:
            self.current = (item, count)

        result = segment_item(self.plan, item, self.model, self.vocabulary, progress)
        result.run = None  # meta.json is in the folder; keep the reply small
        return result

    def progress(self) -> tuple[BatchItem | None, int]:
        """The current video and its frames done (answered while ``segment`` runs)."""
        return self.current


def worker_layout(
    resources: dict[str, float], device: str, cpus_per_worker: int | None, videos: int
) -> tuple[int, dict[str, Any]]:
    """How many workers, and the Ray resources of each: a GPU each when the cluster has
    GPUs (and the device is not the CPU), else ``cpus_per_worker`` CPUs each."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus and not device.startswith(("cpu", "mps")):
        return max(1, min(gpus, videos)), {"num_gpus": 1, "num_cpus": 1}
    per = max(1, min(cpus_per_worker or DEFAULT_CPUS_PER_WORKER, cpus or 1))
    return max(1, min(cpus // per, videos)), {"num_cpus": per}


@dataclass(eq=False)
class _Worker:
    actor: Any
    ready: Any  # the reference of its ready() call, resolved once the model is loaded
    writer: dict[str, Any] | None = None


CONNECT_SECONDS = 10.0  # Ray itself retries an unreachable head for minutes, warning all along


def check_reachable(address: str | None) -> None:
    """Refuse a ``--ray-address`` HOST:PORT (or ray://HOST:PORT) that takes no connection,
    in seconds instead of Ray's minutes of retries; ``auto`` and none are left to Ray."""
    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise OvsegError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise OvsegError(
            f"cannot reach the Ray cluster at {address} ({reason}); is its head node running "
            "(ray start --head) and the port open?"
        ) from None


class RayEngine:
    """Runs a plan's videos on Ray workers; starts a local cluster unless one is joined."""

    name = "ray"

    def __init__(
        self, plan: BatchPlan, *, address: str | None = None, cpus_per_worker: int | None = None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise OvsegError("--engine ray needs Ray: pip install 'ovseg[ray]'") from None
        self.ray, self.plan = ray, plan
        self.started = not ray.is_initialized()
        if self.started:
            check_reachable(address)
            ours = _stop_handlers()
            try:
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False,
                    logging_level=logging.WARNING,
                )  # fmt: skip
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise OvsegError(f"cannot start or join a Ray cluster: {exc}") from None
            finally:
                _restore(ours)
        self.workers: list[_Worker] = []
        try:
            count, options = worker_layout(
                ray.cluster_resources(), plan.config.device, cpus_per_worker, len(plan.todo)
            )
            config = plan.config
            if "num_gpus" in options and config.device.startswith("cuda:"):
                config = dataclasses.replace(config, device="cuda")  # a worker sees one GPU
            self.plan = dataclasses.replace(plan, config=config)
            self.threads = options.get("num_cpus") if "num_gpus" not in options else None
            self.remote = ray.remote(max_concurrency=2, **options)(SegmentWorker)
            self.workers = [self._start() for _ in range(count)]
            self.restarts = count * RETRIES  # replacements allowed for workers that die
            for worker in self.workers:  # every worker loads the model, or the batch stops
                self._check_ready(worker, ray.get(worker.ready))
        except BaseException:
            self.close()
            raise

    def _start(self) -> _Worker:
        actor = self.remote.remote(self.plan, self.threads)
        return _Worker(actor, actor.ready.remote())

    @staticmethod
    def _check_ready(worker: _Worker, info: dict[str, Any]) -> None:
        if info["error"]:
            raise OvsegError(info["error"])
        worker.writer = info["writer"]

    def run(
        self, items: Sequence[BatchItem], on_progress: Progress | None
    ) -> Iterator[VideoResult]:
        """Each video's result as it finishes (in no fixed order)."""
        ray = self.ray
        queue = deque(sorted(items, key=lambda i: -(i.frames or 0)))  # longest first
        tries: dict[BatchItem, int] = {}
        idle = [w for w in self.workers if w.writer is not None]
        starting = {w.ready: w for w in self.workers if w.writer is None}
        running: dict[Any, tuple[_Worker, BatchItem]] = {}
        try:
            while queue or running:
                while idle and queue:
                    worker, item = idle.pop(), queue.popleft()
                    tries[item] = tries.get(item, 0) + 1
                    running[worker.actor.segment.remote(item)] = (worker, item)
                    if on_progress is not None:
                        on_progress(item, 0)
                if not running and not starting:  # no worker left to run the rest
                    while queue:
                        item = queue.popleft()
                        error = "every Ray worker died before this video could be segmented"
                        yield VideoResult(item, "failed", error, 0, 0.0, tries.get(item, 0))
                    break
                refs = [*running, *starting]
                finished, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
                for ref in finished:
                    if ref in starting:
                        worker = starting.pop(ref)
                        with contextlib.suppress(ray.exceptions.RayError, OvsegError):
                            self._check_ready(worker, ray.get(ref))  # a replacement: if it
                            idle.append(worker)  # cannot load the model, the others go on
                        continue
                    worker, item = running.pop(ref)
                    result = self._outcome(ref, worker, item, tries[item], queue, starting)
                    if result is None:
                        continue  # its worker died: the video went back to the queue
                    idle.append(worker)
                    yield result
                self._poll(running, on_progress)
        except KeyboardInterrupt as exc:  # Ray's blocking calls turn Interrupted into this
            signum = last_stop_signal()
            if isinstance(exc, Interrupted) or signum is None:
                raise
            raise Interrupted(signum) from None
        finally:
            self._stop(running)

    def _outcome(
        self, ref: Any, worker: _Worker, item: BatchItem, tries: int, queue: deque, starting: dict
    ) -> VideoResult | None:
        """The video's result; None when its worker died and the video is queued again."""
        ray = self.ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._lost(worker, item, starting)
            if output_state(item.output, item.video, self.plan.fingerprint) == "complete":
                return VideoResult(item, "done", None, _frames(item), 0.0, tries)  # died after
            if tries <= RETRIES:
                queue.appendleft(item)
                return None
            error = f"its worker died {tries} times ({describe_error(exc)})"
            return VideoResult(item, "failed", error, 0, 0.0, tries)
        except ray.exceptions.RayError as exc:  # the call itself failed: not the worker
            return VideoResult(item, "failed", describe_error(exc), 0, 0.0, tries)
        result.attempts = tries
        return result

    def _lost(self, worker: _Worker, item: BatchItem, starting: dict) -> None:
        """A worker died: remove its partial folder and start another in its place."""
        with contextlib.suppress(Exception):  # "unavailable" may be a worker cut off: end it
            self.ray.kill(worker.actor, no_restart=True)
        if worker.writer is not None:
            remove_abandoned(item.output, worker.writer)
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)
        if self.restarts > 0:
            self.restarts -= 1
            new = self._start()
            self.workers.append(new)
            starting[new.ready] = new

    def _poll(self, running: dict[Any, tuple[_Worker, BatchItem]], on_progress: Any) -> None:
        """Ask the busy workers how far they are, for the progress bar."""
        if on_progress is None or not running:
            return
        ray = self.ray
        asks = {w.actor.progress.remote(): item for w, item in running.values()}
        answered, _ = ray.wait(list(asks), num_returns=len(asks), timeout=POLL_S)
        for ref in answered:
            with contextlib.suppress(ray.exceptions.RayError):
                item, count = ray.get(ref)
                if item == asks[ref] and count > 0:  # not the video before, nor a restart
                    on_progress(item, count)

    def _stop(self, running: dict[Any, tuple[_Worker, BatchItem]]) -> None:
        """Stopped early (a signal): kill the busy workers, then remove their partial folders."""
        ray = self.ray
        for worker, _ in running.values():
            ray.kill(worker.actor, no_restart=True)
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=STOP_WAIT_S)
        for ref, (worker, item) in running.items():
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(ref, timeout=0)
            if worker.writer is not None:
                remove_abandoned(item.output, worker.writer)

    def close(self) -> None:
        """Kill the workers, and stop the cluster if this engine started it."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.actor, no_restart=True)
        self.workers = []
        if self.started:
            self.ray.shutdown()


def _stop_handlers() -> dict[int, Any]:
    """The stop signals' handlers now (ovseg's cleanup, under the CLI)."""
    return {s: signal.getsignal(s) for s in STOP_SIGNALS}


def _restore(handlers: dict[int, Any]) -> None:
    """Put the stop signals' handlers back after ``ray.init``, which replaces SIGTERM's with
    one that exits at once (and a crash reporter in its core that kills the process): the
    video in progress would be left behind."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def _frames(item: BatchItem) -> int:
    return frames_written(item.output) or 0
