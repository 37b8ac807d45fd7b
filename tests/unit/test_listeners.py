"""ocs_locking.listeners.Listeners: ordered delivery outside the producer's lock."""
import logging
import threading

import pytest

from ocs_locking.listeners import Listeners

from ..support import WAIT


def test_Listeners_deliver_in_put_order_to_every_listener():
    """When items are put and delivered, every listener gets every item once,
    in put order; deliver() with nothing queued does nothing."""
    out = Listeners('test')
    a, b = [], []
    out.add(a.append)
    out.add(b.append)
    for i in range(5):
        out.put(i)
    out.deliver()
    out.deliver()
    assert a == b == [0, 1, 2, 3, 4]
    assert not out.queue


def test_Listeners_a_second_thread_leaves_its_items_to_the_one_delivering():
    """When one thread is delivering and another puts and delivers, the
    second returns at once and the first delivers its item too, in order."""
    out = Listeners('test')
    got, inside, go = [], threading.Event(), threading.Event()

    def slow(item):
        got.append(item)
        if item == 1:
            inside.set()
            assert go.wait(WAIT)
    out.add(slow)
    out.put(1)
    t = threading.Thread(target=out.deliver, daemon=True)
    t.start()
    assert inside.wait(WAIT)
    out.put(2)
    out.deliver()           # returns at once: t is delivering
    assert got == [1]
    go.set()
    t.join(WAIT)
    assert got == [1, 2] and not out.queue


def test_Listeners_failing_listener_is_logged_and_skipped(caplog):
    """When a listener raises, one error naming it and the source is logged
    and the other listeners and later items are still delivered."""
    out = Listeners("TimeoutLock 'hw'")
    got = []
    out.add(lambda item: 1 / 0)
    out.add(got.append)
    out.put('a')
    out.put('b')
    with caplog.at_level(logging.ERROR, logger='ocs_locking.listeners'):
        out.deliver()
    assert got == ['a', 'b']
    assert len(caplog.records) == 2
    assert caplog.records[0].exc_info[0] is ZeroDivisionError
    assert "of TimeoutLock 'hw' failed on 'a'" in caplog.messages[0]


def test_Listeners_schedule_runs_one_pending_delivery():
    """When made with schedule=, deliver() only schedules a run (at most one
    pending at a time) and that run delivers everything queued by then."""
    scheduled, got = [], []
    out = Listeners('test', schedule=scheduled.append)
    out.add(got.append)
    out.put(1)
    out.deliver()
    out.put(2)
    out.deliver()
    assert len(scheduled) == 1 and got == []
    scheduled.pop()()
    assert got == [1, 2]
    out.put(3)
    out.deliver()
    assert len(scheduled) == 1


def test_Listeners_remove_by_equality_and_callable_check():
    """When a bound method is removed (a fresh but equal object), it is no
    longer called; adding something not callable raises TypeError."""
    class Sink:
        def __init__(self):
            self.got = []

        def take(self, item):
            self.got.append(item)
    sink = Sink()
    out = Listeners('test')
    out.add(sink.take)
    out.remove(sink.take)
    out.put(1)
    out.deliver()
    assert sink.got == [] and out.fns == ()
    with pytest.raises(TypeError, match=r'^listener must be callable, not 3$'):
        out.add(3)
