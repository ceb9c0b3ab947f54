"""Between the event loop and a backend: admission (a hard bound), event delivery, disconnects.

Admission counts every generation from the moment it is accepted until the backend reports it ended
(finished, cancelled or failed), with no `await` between the check and the count, so at most
`max_batch + max_queue` generations exist at any time; the next request gets 429 at once.

A backend calls a listener from its own thread for each event; the listener hands it to the request's
asyncio queue with `call_soon_threadsafe`, so no thread per request is needed. A non-streaming request
waits for its result and, at the same time, for the client to go away: a disconnect cancels the
generation, which leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from app.chat.backends.base import Delta, Generation, StreamResult
from app.serve.metrics import Metrics
from app.serve.schemas import OpenAIError


class Admission:
    def __init__(self, max_running: int, max_queue: int):
        self.max_running, self.max_queue = max_running, max_queue
        self.inflight = 0

    @property
    def limit(self) -> int:
        return self.max_running + self.max_queue

    def enter(self, n: int = 1) -> None:
        if self.inflight + n > self.limit:
            waiting = max(0, self.inflight - self.max_running)
            raise OpenAIError(429, f"The server is busy: {self.inflight} generations are running or waiting "
                              f"({waiting} waiting, at most {self.max_queue}). Retry later.",
                              type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        self.inflight += n

    def leave(self) -> None:
        self.inflight = max(0, self.inflight - 1)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class Live:
    """One admitted generation as the event loop sees it: an async stream of Delta, then the Generation."""

    def __init__(self, result: StreamResult, admission: Admission, metrics: Metrics, model: str, started: float,
                 sink: asyncio.Queue | None = None, index: int = 0):
        self.result, self.admission, self.metrics, self.model, self.started = result, admission, metrics, model, started
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, str, Any]] = sink if sink is not None else asyncio.Queue()
        self.index = index
        self.ended = False
        self.first_at: float | None = None
        self.last_at: float | None = None
        result.listen(self._from_backend)

    def _from_backend(self, event: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._arrive, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def _arrive(self, event: tuple[str, Any]) -> None:
        kind, value = event
        now = time.perf_counter()
        if kind == "delta" and value.text:
            if self.first_at is None:
                self.first_at = now
                self.metrics.ttft.observe(now - self.started)
            else:
                self.metrics.itl.observe(now - (self.last_at or now))
            self.last_at = now
        if kind in ("done", "error") and not self.ended:
            self.ended = True
            self.admission.leave()
            if kind == "done":
                self.metrics.count_tokens(self.model, value.prompt_tokens, value.completion_tokens)
        self.queue.put_nowait((self.index, kind, value))

    async def events(self) -> AsyncIterator[Delta | Generation]:
        while True:
            _, kind, value = await self.queue.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return

    async def collect(self) -> Generation:
        async for item in self.events():
            if isinstance(item, Generation):
                return item
        raise RuntimeError("generation ended without a result")  # pragma: no cover


async def merged(lives: list[Live], sink: asyncio.Queue) -> AsyncIterator[tuple[int, Delta | Generation]]:
    """(choice index, Delta or Generation) from lives sharing one queue, until every one has ended."""
    open_ = len(lives)
    while open_:
        index, kind, value = await sink.get()
        if kind == "error":
            raise value
        if kind == "done":
            open_ -= 1
        yield index, value


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect_all(lives: list[Live], request: Request) -> list[Generation]:
    """Every generation's result; cancels them all if the client disconnects first."""
    results = asyncio.ensure_future(asyncio.gather(*(live.collect() for live in lives)))
    results.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" noise
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not results.done():
            raise ClientGone()
        return results.result()
    finally:
        gone.cancel()
        if not results.done():
            results.cancel()
            for live in lives:
                live.result.cancel()
