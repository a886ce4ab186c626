"""Classifier calls for the server, off the event loop: they are CPU-bound torch work, and the event loop must go on
serving 100 streams while a forward pass runs.

Each classifier has one thread, and one call in flight at a time: a classifier need not be thread-safe (a forward
hook on a shared module is not), and a forward pass runs on torch's own threads (`cai guard serve` sets how many:
`classifier_threads`).
What arrives meanwhile waits and goes in the next call, so under load the calls grow instead of queueing: requests
arriving while an input batch is scored form the next batch, and the output steps of all streams that arrived
while one output job ran are scored in the next job, in one batched forward pass. When the guard is idle nothing
waits for a batch to fill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from constitutional.classifiers.screening import InputClassifier, Outcome, OutputClassifier, Push, Verdict
from constitutional.guard.gate import OutputGate, Payload, Piece, push_together
from constitutional.guard.metrics import GuardMetrics
from constitutional.guard.settings import GuardSettings
from constitutional.models.base import Message


class ClassifierError(Exception):
    """A classifier raised (or answered nonsense); `stage` says which."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"the {stage} classifier failed ({type(cause).__name__}: {cause})")
        self.stage = stage


@dataclass
class _Job:
    """One stream's classifier step waiting for the output thread."""

    pushes: list[Push]
    future: asyncio.Future
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class _Waiting:
    conversations: list[list[Message]]
    future: asyncio.Future


class Classifiers:
    """The input and output classifiers behind a thread pool, with their latency recorded."""

    def __init__(
        self,
        input_classifier: InputClassifier,
        output_classifier: OutputClassifier,
        settings: GuardSettings,
        metrics: GuardMetrics,
    ):
        self.input, self.output = input_classifier, output_classifier
        self.settings, self.metrics = settings, metrics
        self.input_thread = ThreadPoolExecutor(1, thread_name_prefix="guard-input-classifier")
        self.output_thread = ThreadPoolExecutor(1, thread_name_prefix="guard-output-classifier")
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task | None = None
        self._pending: list[_Job] = []  # output scoring waiting for the next job
        self._output_busy = False

    async def screen(self, conversations: list[list[Message]]) -> list[Verdict]:
        """One verdict per conversation, from a batch with the requests that arrived while the last one ran."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._batches())
        waiting = _Waiting(conversations, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(waiting)
        return await waiting.future

    async def _batches(self) -> None:
        carried: _Waiting | None = None  # the request that did not fit the last batch starts the next one
        while True:
            batch = [carried or await self._queue.get()]
            carried = None
            size = len(batch[0].conversations)
            while not self._queue.empty():
                waiting = self._queue.get_nowait()
                if size + len(waiting.conversations) > self.settings.max_input_batch:
                    carried = waiting
                    break
                batch.append(waiting)
                size += len(waiting.conversations)
            batch = [waiting for waiting in batch if not waiting.future.done()]  # cancelled: the client left
            if batch:
                await self._screen_batch(batch)

    async def _screen_batch(self, batch: list[_Waiting]) -> None:
        conversations = [c for waiting in batch for c in waiting.conversations]
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            verdicts = await loop.run_in_executor(self.input_thread, self.input.screen, conversations)
            if len(verdicts) != len(conversations):
                raise ValueError(f"{len(verdicts)} verdicts for {len(conversations)} conversations")
        except Exception as err:
            self.metrics.classifier_errors.labels("input").inc()
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(ClassifierError("input", err))
            return
        self.metrics.classifier_seconds.labels("input").observe(time.perf_counter() - started)
        self.metrics.input_batch.observe(len(conversations))
        start = 0
        for waiting in batch:
            end = start + len(waiting.conversations)
            if not waiting.future.done():
                waiting.future.set_result(verdicts[start:end])
            start = end

    def gate(self, conversation: Sequence[Message]) -> OutputGate:
        return OutputGate(self.output, conversation, self.settings.hold_back_tokens, self.settings.step_tokens)

    async def score(self, gate: OutputGate, pieces: Sequence[Piece[Payload]], final: bool = False) -> list[Payload]:
        """`gate.score(pieces, final)`, with the classifier step (when one is due) in the output classifier's
        thread; the payloads safe to send now. A classifier error is left in `gate.error` (and counted) for the
        caller's fail-open or fail-closed policy.

        The gate's own work (holding pieces, counting their tokens until a step's worth has come) stays on the event
        loop: most pieces need no step, and a thread hop per token would cost more than a keyword classifier's whole
        push. The steps of all streams asked for in one turn of the event loop, or while the last job ran, go to the
        thread as one job: one `push_batch`, one batched forward pass."""
        failed_before = gate.error is not None
        pushes = gate.take(pieces, final)
        released = gate.finish(await self._push(pushes) if pushes else [])
        if gate.error is not None and not failed_before:
            self.metrics.classifier_errors.labels("output").inc()
        return released

    async def _push(self, pushes: list[Push]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        job = _Job(pushes, loop.create_future())
        if not self._pending and not self._output_busy:
            loop.call_soon(self._dispatch, loop)
        self._pending.append(job)
        return await job.future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs, self._pending = self._pending, []
        self._output_busy = True
        started = time.perf_counter()
        done = loop.run_in_executor(self.output_thread, self._push_all, jobs)
        done.add_done_callback(lambda outcome: self._deliver(loop, jobs, outcome, time.perf_counter() - started))

    def _push_all(self, jobs: list[_Job]) -> None:
        for job, outcomes in zip(jobs, push_together(self.output, [job.pushes for job in jobs]), strict=True):
            job.outcomes = outcomes

    def _deliver(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], outcome: asyncio.Future, seconds: float):
        self._output_busy = False
        if self._pending:  # what arrived while this job ran
            self._dispatch(loop)
        self.metrics.classifier_seconds.labels("output").observe(seconds)
        failure = None if outcome.cancelled() else outcome.exception()  # push_together keeps classifier errors: a bug
        for job in jobs:
            if job.future.done():  # cancelled: its client left
                continue
            if failure is not None or outcome.cancelled():
                job.future.set_exception(failure or asyncio.CancelledError())
            else:
                job.future.set_result(job.outcomes)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self.input_thread.shutdown(wait=False, cancel_futures=True)
        self.output_thread.shutdown(wait=False, cancel_futures=True)
