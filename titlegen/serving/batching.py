"""Dynamic batching: the articles of concurrent requests titled together, in one generate call.

A generate call on 16 articles takes little longer than on one (the model's weights are read once per step for
all of them), so a server that ran one call per request would title far fewer articles per second than
titlegen-predict does on a file. `Batcher` queues requests by their decoding settings; once the oldest waiting
request has waited `batch_wait` seconds, or its settings have `batch_size` articles waiting, it titles the
articles of that group's requests (oldest first, up to `batch_size`) in one call, on a worker thread, so the
event loop keeps accepting requests meanwhile. While a call runs, the next batch fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# generate(articles, settings, deadline) -> one title per article; settings are those of a request (see
# `Batcher.titles`), deadline the `time.monotonic()` by which every request of the batch has had its answer.
Generate = Callable[[Sequence[str], Hashable, float], list[str]]


class Busy(Exception):
    """The server cannot title a request in time: its queue is full, or the request waited too long."""


@dataclass(eq=False)
class _Job:
    articles: Sequence[str]
    settings: Hashable
    arrival: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers the articles of concurrent requests with equal settings into batches for one generate call.

    Args:
        generate: Titles a list of articles with one request's settings; runs on a worker thread. It is given
            the time (`time.monotonic`) after which no request of the batch waits any more, and should stop
            by then, so that no request holds the worker for longer than `timeout`
            (see `titlegen.serving.served_model`).
        batch_size: Most articles in one call (a request with more is titled alone, in one call).
        batch_wait: Seconds the oldest waiting request waits for others to join its batch.
        max_queue: Most articles waiting; a request that would exceed it is refused at once.
        timeout: Seconds a request may wait for its titles, queued and generating.
    """

    def __init__(self, generate: Generate, *, batch_size: int, batch_wait: float, max_queue: int, timeout: float):
        self.generate = generate
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.max_queue = max_queue
        self.timeout = timeout
        self.calls = 0  # generate calls made, for /healthz and the tests
        self._groups: dict[Hashable, deque[_Job]] = {}
        self._queued = 0  # articles waiting
        self._arrived = asyncio.Event()
        self._generating: list[_Job] = []  # the jobs of the generate call in progress
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        """Articles waiting for a generate call."""
        return self._queued

    @property
    def generating(self) -> int:
        """Articles of the generate call in progress."""
        return sum(len(job.articles) for job in self._generating)

    def start(self) -> None:
        """Starts batching; call from the event loop that will call `titles`."""
        # One thread: generate calls run one after the other, each with all of torch's threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titlegen-generate")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="titlegen-batcher")

    async def stop(self) -> None:
        """Stops batching, after waiting for the generate call in progress; requests still waiting get `Busy`.

        A server stops its batcher once its requests in flight are answered, so normally none are waiting.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        for job in [*self._generating, *(job for group in self._groups.values() for job in group)]:
            if not job.future.done():
                job.future.set_exception(Busy("the server is shutting down"))
        self._groups.clear()
        self._queued = 0

    async def titles(self, articles: Sequence[str], settings: Hashable) -> list[str]:
        """The titles of one request's articles, in order, generated in a batch with other requests' articles.

        Raises:
            Busy: when the queue is full, or no titles came within `timeout` seconds.
        """
        if self._task is None or self._task.done():
            raise Busy("the server is not running")
        if self._queued + len(articles) > self.max_queue:
            raise Busy(f"{self._queued} articles are waiting (max_queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        job = _Job(articles, settings, loop.time(), loop.create_future())
        self._groups.setdefault(settings, deque()).append(job)
        self._queued += len(articles)
        self._arrived.set()
        try:
            # shield: a timeout must not cancel the future, which the batch it is in will still set.
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout)
        except asyncio.TimeoutError:
            self._withdraw(job)
            raise Busy(f"no titles within {self.timeout:g} s") from None

    def _withdraw(self, job: _Job) -> None:
        """Takes a job out of the queue if it is still there; a job being generated gets no titles."""
        job.future.cancel()  # done: the batch it may be in leaves it alone
        group = self._groups.get(job.settings)
        if group is not None and job in group:
            group.remove(job)
            self._queued -= len(job.articles)
            if not group:
                del self._groups[job.settings]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._groups:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            settings = min(self._groups, key=lambda key: self._groups[key][0].arrival)  # the oldest request's
            deadline = self._groups[settings][0].arrival + self.batch_wait
            while sum(len(job.articles) for job in self._groups.get(settings, ())) < self.batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            if settings not in self._groups:  # its requests timed out meanwhile
                continue
            batch = self._generating = self._take(settings)
            articles = [article for job in batch for article in job.articles]
            # Past the newest request's timeout no request of the batch waits for its titles any more.
            deadline = time.monotonic() + max(job.arrival for job in batch) + self.timeout - loop.time()
            self.calls += 1
            try:
                titles = await loop.run_in_executor(self._executor, self.generate, articles, settings, deadline)
            except Exception as err:  # the requests of this batch get the error; the server goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            else:
                start = 0
                for job in batch:
                    if not job.future.done():  # not timed out
                        job.future.set_result(titles[start : start + len(job.articles)])
                    start += len(job.articles)
            self._generating = []

    def _take(self, settings: Hashable) -> list[_Job]:
        """Takes the oldest jobs of a group, up to `batch_size` articles (at least one job)."""
        group = self._groups[settings]
        batch = [group.popleft()]
        while group and sum(len(job.articles) for job in batch) + len(group[0].articles) <= self.batch_size:
            batch.append(group.popleft())
        if not group:
            del self._groups[settings]
        self._queued -= sum(len(job.articles) for job in batch)
        return batch
