"""Acknowledgements from kafka-python's sender thread reach the event loop that waits for them: every writer gets
its own answer (metadata or error), all that arrive together take one wake-up of the loop, and a writer that
stopped waiting or a loop that is gone costs nothing (services/common/kafka.py ``_LoopAcks``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from services.common.kafka import _LoopAcks


class CountingLoop:
    """A real event loop whose thread-safe wake-ups are counted."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wakeups = 0
        real = self.loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any) -> Any:
            self.wakeups += 1
            return real(callback, *args)

        self.loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]


def from_another_thread(work: Any) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_acks_arriving_together_resolve_every_writer_with_one_wakeup() -> None:
    counting = CountingLoop()
    loop = counting.loop
    try:
        acks = _LoopAcks(loop)
        waiters: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(5)]
        failure = KafkaTimeoutError("not acknowledged")

        def one_produce_response() -> None:  # the sender thread completes a batch's records in a row
            for index, waiter in enumerate(waiters[:4]):
                acks.resolve(waiter, ("meta", index))
            acks.reject(waiters[4], failure)

        from_another_thread(one_produce_response)  # the loop is not running: nothing is delivered yet
        assert not any(waiter.done() for waiter in waiters)
        results = loop.run_until_complete(asyncio.gather(*waiters, return_exceptions=True))
        assert results == [("meta", 0), ("meta", 1), ("meta", 2), ("meta", 3), failure]
        assert counting.wakeups == 1

        later = loop.create_future()  # the next response wakes the loop again
        from_another_thread(lambda: acks.resolve(later, "next"))
        assert loop.run_until_complete(later) == "next"
        assert counting.wakeups == 2
    finally:
        loop.close()


def test_a_writer_that_stopped_waiting_is_skipped() -> None:
    loop = asyncio.new_event_loop()
    try:
        acks = _LoopAcks(loop)
        gone, waiting = loop.create_future(), loop.create_future()
        gone.cancel()  # timed out or cancelled before its ack came
        def late_response() -> None:
            acks.resolve(gone, "late")
            acks.resolve(waiting, "meta")

        from_another_thread(late_response)
        assert loop.run_until_complete(waiting) == "meta"
        assert gone.cancelled()
    finally:
        loop.close()


def test_an_ack_for_a_closed_loop_is_dropped_and_the_next_loop_is_unaffected() -> None:
    closed = asyncio.new_event_loop()
    waiter = closed.create_future()
    closed.close()
    acks = _LoopAcks(closed)
    acks.resolve(waiter, "meta")  # no exception into kafka-python's sender thread
    acks.resolve(waiter, "again")  # and nothing left pending that would swallow later acks
    assert acks._pending == []
    with pytest.raises(asyncio.InvalidStateError):
        waiter.result()
