import pytest

from ocs_locking import TimeoutLock

from .support import FakeReactor, ReactorActor, ReactorThread, ThreadActor


@pytest.fixture
def fake_reactor():
    return FakeReactor()


@pytest.fixture(scope='session')
def reactor_thread():
    rt = ReactorThread()
    yield rt
    rt.stop()


@pytest.fixture
def make_actor(reactor_thread):
    """make_actor('thread'|'reactor', lock, name) -> an actor holding from there."""
    made = []

    def make(kind, lock, name):
        actor = ThreadActor(lock, name) if kind == 'thread' else \
            ReactorActor(lock, name, reactor_thread)
        made.append(actor)
        return actor
    yield make
    for a in made:
        a.close()


@pytest.fixture
def lock():
    return TimeoutLock(name='hw')
