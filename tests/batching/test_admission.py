"""Admission on its own: room reserved before preparing, the line for it, tickets. No thread, no model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching.admission import Admission
from service.core.errors import NotReady, Overloaded


def no_submit(*args):
    raise AssertionError("nothing is submitted here")


def reserver(admission: Admission):
    """``reserve(items, wait=True)`` as the batcher offers it, for tickets that are never submitted."""

    def reserve(items: int, wait: bool = True):
        return admission.reserve(items, no_submit, timeout_s=30, wait=wait)

    return reserve


def eventually(condition, timeout_s: float = 10) -> bool:
    """Whether ``condition()`` holds within ``timeout_s``: orders threads by what they did, not by sleeping."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_full_queue_holds_new_work_for_the_admission_wait_and_admits_it_when_room_frees():
    """Clients that resend at once after a 429 would spin; a short wait for room keeps them still."""
    admission = Admission("test", max_queued=2, wait_s=30)
    reserve = reserver(admission)
    holder = reserve(2)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(reserve, 1)
        assert eventually(lambda: admission.in_line == 1)
        assert not waiting.done()  # waiting for room, not refused
        with pytest.raises(Overloaded):  # a caller that may not wait is refused at once
            reserve(1, wait=False)
        holder.release()
        admitted = waiting.result(10)
    assert admission.waiting == 1
    admitted.release()


def test_the_admission_wait_ends_in_a_refusal_when_no_room_frees():
    admission = Admission("test", max_queued=2, wait_s=0.05)
    reserve = reserver(admission)
    holder = reserve(2)
    with pytest.raises(Overloaded):
        reserve(1)
    holder.release()
    assert admission.waiting == 0


def test_the_line_for_room_is_first_come_first_served():
    """A request for many images is not overtaken forever by single images arriving after it."""
    admission = Admission("test", max_queued=4, wait_s=30)
    reserve = reserver(admission)
    holders = [reserve(1) for _ in range(4)]
    admitted: list[str] = []

    def wait_for_room(name: str, images: int):
        ticket = reserve(images)
        admitted.append(name)
        return ticket

    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(wait_for_room, "big", 3)
        assert eventually(lambda: admission.in_line == 1)  # "big" is first in line
        small = pool.submit(wait_for_room, "small", 1)
        assert eventually(lambda: admission.in_line == 2)
        holders.pop().release()  # room for one: "small" fits, but "big" is ahead of it
        assert admission.in_line == 2 and not small.done()
        for holder in holders:
            holder.release()
        big.result(10).release()
        small.result(10)
    assert admitted == ["big", "small"]


def test_a_ticket_resized_to_the_images_sent_holds_exactly_that_room():
    """Room for one is held before an upload is read, then resized to what the body held."""
    admission = Admission("test", max_queued=4, wait_s=0)
    reserve = reserver(admission)
    ticket = reserve(1)
    ticket.resize(3)
    assert admission.waiting == 3
    with pytest.raises(Overloaded):
        ticket.resize(5)
    ticket.resize(2)
    assert admission.waiting == 2
    ticket.release()
    assert admission.waiting == 0


def test_a_released_reservation_frees_its_room():
    admission = Admission("test", max_queued=2, wait_s=0)
    reserve = reserver(admission)
    with pytest.raises(ValueError), reserve(2):
        raise ValueError("the image did not decode")
    assert admission.waiting == 0
    reserve(2).release()
    assert admission.waiting == 0


def test_closing_refuses_those_in_line_at_once_and_everyone_after_with_its_error():
    admission = Admission("test", max_queued=1, wait_s=30)
    reserve = reserver(admission)
    reserve(1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(reserve, 1)
        assert eventually(lambda: admission.in_line == 1)
        started = time.monotonic()
        admission.close(lambda: NotReady("shutting down"))
        with pytest.raises(NotReady, match="shutting down"):
            waiting.result(10)
        assert time.monotonic() - started < 5  # at the close, not at the end of its 30 s wait
    with pytest.raises(NotReady):
        reserve(0)


def test_a_ticket_submits_once_with_its_room_and_deadline_and_counts_as_prepared_until_then():
    admission = Admission("test", max_queued=4)
    submitted = []
    ticket = admission.reserve(3, lambda *args: submitted.append(args) or "answer", timeout_s=5)
    assert (admission.waiting, admission.preparing) == (3, 1)
    assert ticket.submit("payload", kind="explain") == "answer"
    ((payload, items, deadline, kind),) = submitted
    assert (payload, items, kind) == ("payload", 3, "explain") and 4 < deadline - time.monotonic() <= 5
    ticket.release()  # after submit, the room is the thread's to free: releasing again frees nothing
    assert admission.waiting == 3
