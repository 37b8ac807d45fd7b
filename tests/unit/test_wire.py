"""The wire contract (pure): names, URIs, row keys and error reasons."""
import pytest

from ocs_locking import wire
from ocs_locking.wire import (EVENTS, LEASE_PROCEDURES, ROW_KEYS, error_reason, feed_topic,
                              lease_uri, one_line)


def test_wire_names_are_the_documented_ones():
    """When the contract's names are read, they are those of the Events page
    (changing one breaks every deployed agent and client)."""
    assert (wire.LOCKS_FEED, wire.HEARTBEAT_FEED, wire.OWNERSHIP_FEED, wire.STATS_FEED) == \
        ('locks', 'heartbeat', 'ownership', 'lock_stats')
    assert set(EVENTS) == {'waiting', 'acquired', 'released', 'gave_up', 'closed', 'snapshot'}
    assert wire.OWNERSHIP_KINDS == ('snapshot', 'change', 'leases') and wire.TABLE_KEY == 'locks'
    assert wire.QUEUE_SHOWN == 8 and wire.LEASES_KIND == 'leases'
    assert LEASE_PROCEDURES == ('acquire', 'renew', 'release', 'watch', 'preempt')


def test_ROW_KEYS_hold_the_status_json_keys_once_each():
    """When rows are shown as JSON by ocs-locks, every key it keeps is a row key."""
    from ocs_locking.cli import JSON_KEYS
    assert len(set(ROW_KEYS)) == len(ROW_KEYS)
    assert set(JSON_KEYS) <= set(ROW_KEYS) and 'held_since' in ROW_KEYS


def test_feed_topic_and_its_wildcard():
    """When a topic is built, it is <root>.<instance>.feeds.<feed>; an empty
    instance gives the wildcard pattern."""
    assert feed_topic('observatory', 'sim-device-1', 'locks') == \
        'observatory.sim-device-1.feeds.locks'
    assert feed_topic('observatory', '', 'locks') == 'observatory..feeds.locks'


def test_lease_uri_names_only_lease_procedures():
    """When a lease URI is built it is <registry>.lease.<name>; any other
    name is refused in one line."""
    assert lease_uri('observatory.lock-registry', 'renew') == \
        'observatory.lock-registry.lease.renew'
    assert lease_uri('observatory.lock-registry', 'claim') == \
        'observatory.lock-registry.lease.claim'
    with pytest.raises(ValueError, match=r"^no lease procedure 'history'; one of acquire, "
                                         r"renew, release, watch, preempt, book, unbook, claim, "
                                         r"calendar, next_free$"):
        lease_uri('observatory.lock-registry', 'history')


def test_one_line_squeezes_and_cuts():
    """When text has newlines or is long, one_line makes one line of at most
    ``most`` characters."""
    assert one_line('a\n  b\tc') == 'a b c'
    assert one_line('x' * 400, most=10) == 'xxxxxxx...'


class ApplicationError(Exception):
    def __init__(self, error, *args):
        super().__init__(*args)
        self.error = error


def test_error_reason_from_autobahn_ocs_and_plain_errors():
    """When an error comes from autobahn, from ocs's HTTP client or from
    anywhere else, error_reason gives one line; no such procedure means the
    agent is not running."""
    assert error_reason(ApplicationError('wamp.error.no_such_procedure')) == \
        'it is not running (no such agent on the router)'
    assert error_reason(ApplicationError('wamp.error.not_authorized')) == \
        'wamp.error.not_authorized'
    assert error_reason(ApplicationError('x.y', 'denied\nbecause')) == 'denied because'
    packed = [0, 1, 2, 3, 'wamp.error.no_such_procedure', ['gone'], {}]
    assert error_reason(Exception(packed), not_running='down') == 'down'
    packed = [0, 1, 2, 3, 'app.error', ['refused: busy'], {}]
    assert error_reason(Exception(packed)) == 'refused: busy'
    assert error_reason(OSError('Failed to connect')) == 'Failed to connect'
    assert error_reason(RuntimeError()) == 'RuntimeError'
