import logging
import os
import re

import pytest

from ocs_locking import TimeoutLock

from .support import FakeReactor, ReactorActor, ReactorThread, ThreadActor

logger = logging.getLogger(__name__)


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


#: What a crossbar router or a simulated device logs when its port was taken
#: between tools.devsite.free_port() choosing it and the process binding it.
#: free_port() hands out ports from the ephemeral range, which any outgoing
#: connection on the machine may take meanwhile: rare, but on a shared
#: machine with several sites starting at once it happens.
PORT_TAKEN = ('crossbar.error.cannot_listen', 'Address already in use')


def port_was_taken(message):
    """True when a SiteError message points at a log that says the port was
    taken (the error says "see <log path>")."""
    match = re.search(r'see (\S+\.log)', str(message))
    if match is None or not os.path.exists(match.group(1)):
        return False
    with open(match.group(1), errors='replace') as f:
        log = f.read()
    return any(m in log for m in PORT_TAKEN)


def start_site(make, attempts=3):
    """Start ``make(attempt)`` (a new tools.devsite.Site each time) and
    return it running. Only when a port turned out to be taken is it tried
    again, on fresh ports; any other failure is raised at once."""
    from tools.devsite import SiteError
    for attempt in range(attempts):
        site = make(attempt)
        try:
            site.start()
            return site
        except SiteError as e:
            site.close()
            if attempt + 1 < attempts and port_was_taken(e):
                logger.warning('site start: %s (port taken meanwhile); trying new ports', e)
                continue
            raise


@pytest.fixture(scope='session')
def site_starter():
    """The :func:`start_site` function, for fixtures that start a real site."""
    return start_site
