"""``serving.coalesce``: concurrent requests' items merged into fewer calls, each request
getting back exactly its own results."""

from __future__ import annotations

import asyncio

import pytest

from serving.coalesce import Coalesce


class Service:
    """A stand-in batchable call: records each call's items; answers ``item * 10`` after
    ``delay`` seconds; fails a call that holds ``bad``."""

    def __init__(self, delay: float = 0.01, bad: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.bad = bad
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.bad in items:
            raise RuntimeError("model failed")
        return [x * 10 for x in items]


def test_a_lone_request_goes_at_once_with_only_its_items():
    service = Service()

    async def main():
        c = Coalesce(service, max_items=64, in_flight=2)
        return await c([1, 2, 3]), await c([4])

    assert asyncio.run(main()) == ([10, 20, 30], [40])
    assert service.calls == [[1, 2, 3], [4]]


def test_concurrent_requests_share_calls_and_each_gets_its_own_results():
    service = Service()
    requests = [[i, i + 100] for i in range(40)]  # 80 items

    async def main():
        c = Coalesce(service, max_items=16, in_flight=2)
        return await asyncio.gather(*(c(r) for r in requests))

    results = asyncio.run(main())
    assert results == [[x * 10 for x in r] for r in requests]
    # the first two requests find free slots; the rest queue and go 8 requests (16 items) a call
    assert service.calls[:2] == [requests[0], requests[1]]
    assert [len(c) for c in service.calls[2:]] == [16, 16, 16, 16, 12]
    assert sorted(x for c in service.calls for x in c) == sorted(x for r in requests for x in r)
    assert service.most_running == 2


def test_a_request_is_never_split_and_must_fit():
    service = Service()

    async def main():
        c = Coalesce(service, max_items=5, in_flight=1)
        out = await asyncio.gather(c([1, 2, 3]), c([4, 5, 6]), c([7, 8]))
        with pytest.raises(ValueError, match="6 items: a call takes 1 to 5"):
            await c([1, 2, 3, 4, 5, 6])
        with pytest.raises(ValueError, match="0 items"):
            await c([])
        return out

    assert asyncio.run(main()) == [[10, 20, 30], [40, 50, 60], [70, 80]]
    assert service.calls == [[1, 2, 3], [4, 5, 6, 7, 8]]


def test_a_failed_call_fails_only_the_requests_in_it():
    service = Service(bad=7)

    async def main():
        c = Coalesce(service, max_items=64, in_flight=1)
        return await asyncio.gather(c([1]), c([7]), c([8]), return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert first == [10]  # its own call
    assert isinstance(second, RuntimeError) and isinstance(third, RuntimeError)  # shared a call
    assert service.calls == [[1], [7, 8]]


def test_a_wrong_number_of_results_is_an_error_not_a_shifted_answer():
    async def short(items):
        return items[:-1]

    async def main():
        return await Coalesce(short, max_items=8, in_flight=1)([1, 2])

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        asyncio.run(main())


def test_a_cancelled_request_leaves_the_others_answered():
    service = Service(delay=0.05)

    async def main():
        c = Coalesce(service, max_items=64, in_flight=1)
        first = asyncio.ensure_future(c([1]))
        await asyncio.sleep(0)  # the first call is running
        gone = asyncio.ensure_future(c([2]))
        kept = asyncio.ensure_future(c([3]))
        await asyncio.sleep(0)
        gone.cancel()
        return await first, await kept, gone.cancelled()

    assert asyncio.run(main()) == ([10], [30], True)
    assert service.calls == [[1], [3]]  # the cancelled request's item was not sent
