"""Requests' items merged into fewer calls to a batchable inference service.

BentoML's adaptive batching merges calls inside an inference service, but each request still
crosses the front -> service hop as its own HTTP call, and for small requests that hop (an HTTP
client call in the front; the server, its middleware and the batching queue in the service)
costs more than the model's work. ``Coalesce`` sends, in one call, the items of every request
that arrived while earlier calls were in flight: a lone request goes at once, so nothing waits
for a timer, and under load each call carries the items of many requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Call = Callable[[list[Any]], Awaitable[Sequence[Any]]]


class Coalesce:
    """``await coalesce(items)`` returns ``call(items)``'s results for these items.

    Args:
        call: the batchable call (one result per item, in order).
        max_items: items per call at most (the service's ``max_batch_size``); a request is
            never split, so each request must fit.
        in_flight: calls running at once; a request that finds them all busy waits for the next.
    """

    def __init__(self, call: Call, max_items: int, in_flight: int) -> None:
        if max_items < 1 or in_flight < 1:
            raise ValueError(f"max_items ({max_items}) and in_flight ({in_flight}) must be >= 1")
        self.call = call
        self.max_items = max_items
        self.in_flight = in_flight
        self.waiting: deque[tuple[list[Any], asyncio.Future]] = deque()
        self.running: set[asyncio.Task] = set()

    async def __call__(self, items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not 1 <= len(items) <= self.max_items:
            raise ValueError(f"{len(items)} items: a call takes 1 to {self.max_items}")
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((items, done))
        self._start()
        return await done

    def _start(self) -> None:
        while self.waiting and len(self.running) < self.in_flight:
            group = [self.waiting.popleft()]
            size = len(group[0][0])
            while self.waiting and size + len(self.waiting[0][0]) <= self.max_items:
                group.append(self.waiting.popleft())
                size += len(group[-1][0])
            task = asyncio.create_task(self._send(group))
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self._start()

    async def _send(self, group: list[tuple[list[Any], asyncio.Future]]) -> None:
        live = [(items, done) for items, done in group if not done.done()]  # not cancelled
        if not live:
            return
        sent = [x for items, _ in live for x in items]
        try:
            results = list(await self.call(sent))
            if len(results) != len(sent):
                raise RuntimeError(
                    f"the service answered {len(results)} results for {len(sent)} items"
                )
        except asyncio.CancelledError:  # the server is stopping: so are the requests
            for _, done in live:
                done.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - each request in the call gets the error
            for _, done in live:
                if not done.done():
                    done.set_exception(err)
            return
        start = 0
        for items, done in live:
            if not done.done():
                done.set_result(results[start : start + len(items)])
            start += len(items)
