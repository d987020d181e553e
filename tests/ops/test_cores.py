"""Cores shared by workers (service/ops/cores.py): a worker alone with work gets every core, across real forks."""

from __future__ import annotations

import os

import pytest

from service.ops import cores


@pytest.fixture
def page():
    """A master's page with no linger, this process joined to its first slot as a forked worker would be."""
    master = cores.WorkerPage(slots=4, linger_s=0.0)
    cores.join(master, master.assign())
    yield master
    cores.leave()


class OtherWorker:
    """A forked child that joins ``slot`` of the same page, holds ``items`` of work and publishes ``connections``
    (None: publishes nothing) until stopped."""

    def __init__(self, page: cores.WorkerPage, slot: int, items: int = 1, connections: int | None = None):
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: no pytest, no torch; only the page
            try:
                cores.join(page, slot)
                cores.add_work(items)
                if connections is not None:
                    cores.publish_connections(connections)
                os.write(ready_w, b"x")
                os.read(self._stop_r, 1)
                cores.add_work(-items)
            finally:
                os._exit(0)
        os.read(ready_r, 1)
        os.close(ready_r)
        os.close(ready_w)

    def finish(self) -> None:
        """Its work ends and it exits (its mark then lingers, as a live worker's would)."""
        os.write(self._stop_w, b"x")
        os.waitpid(self.pid, 0)


def test_a_worker_alone_gets_every_core_and_shares_them_once_another_has_work(page):
    assert cores.threads_for_pass(share=1, every=2) == 2  # nobody has work
    cores.add_work(3)
    assert cores.threads_for_pass(share=1, every=2) == 2  # only this worker has

    other = OtherWorker(page, page.assign())
    assert cores.busy_workers() == 2
    assert cores.threads_for_pass(share=1, every=2) == 1

    other.finish()
    assert cores.threads_for_pass(share=1, every=2) == 2
    cores.add_work(-3)
    assert cores.busy_workers() == 0


def test_a_worker_stays_busy_for_the_linger_after_its_work_ends():
    master = cores.WorkerPage(slots=2, linger_s=3600.0)  # the next request of the same clients is on its way
    cores.join(master, master.assign())
    try:
        other = OtherWorker(master, master.assign())
        other.finish()
        assert cores.threads_for_pass(share=1, every=2) == 1
    finally:
        cores.leave()


def test_the_master_clears_the_slot_of_a_worker_that_died_with_work_in_hand(page):
    slot = page.assign()
    other = OtherWorker(page, slot, items=5)
    os.kill(other.pid, 9)  # killed mid-pass: it never releases its work
    os.waitpid(other.pid, 0)
    assert cores.threads_for_pass(share=1, every=2) == 1

    page.free(slot)  # gunicorn_conf.child_exit
    assert cores.threads_for_pass(share=1, every=2) == 2
    assert page.assign() == slot  # and the slot serves the replacement


def test_outside_gunicorn_a_pass_runs_on_its_share():
    cores.leave()
    cores.add_work(1)  # no page: nothing to mark, nothing to fail
    assert cores.busy_workers() == 0
    assert cores.threads_for_pass(share=1, every=2) == 1


def test_misuse_is_refused_with_the_reason(page):
    with pytest.raises(ValueError, match="released twice"):
        cores.add_work(-1)
    with pytest.raises(ValueError, match="between 1 and every core"):
        cores.threads_for_pass(share=3, every=2)
    with pytest.raises(ValueError, match="at least one slot"):
        cores.WorkerPage(slots=0)


def test_a_full_page_leaves_new_workers_out_of_lending():
    master = cores.WorkerPage(slots=1)
    assert master.assign() == 0
    assert master.assign() is None
    cores.join(master, None)  # joined to nothing: the share, always
    assert cores.threads_for_pass(share=1, every=2) == 1


def test_connections_go_to_the_worker_that_holds_fewest(page):
    assert cores.fewest_connections_elsewhere() is None  # no other worker accepts: never hold back
    slot = page.assign()
    other = OtherWorker(page, slot, items=0)
    assert cores.fewest_connections_elsewhere() is None, "a worker that has not published yet is booting"
    other.finish()

    other = OtherWorker(page, slot, items=0, connections=3)
    assert cores.fewest_connections_elsewhere() == 3
    cores.publish_connections(None)  # this worker stops accepting: the other's count is unchanged
    assert cores.fewest_connections_elsewhere() == 3
    page.free(slot)  # it exited
    assert cores.fewest_connections_elsewhere() is None
    other.finish()
