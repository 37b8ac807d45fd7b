"""ocs-locks book / unbook / calendar / next-free without a site: the time
arguments, the window sent to the registry, the table, and every bad
argument refused in one line (exit 2) before anything is asked (the
registry's side: tests/integration/test_bookings.py)."""
import calendar as cal_mod
from types import SimpleNamespace

import pytest

from ocs_locking import cli
from ocs_locking.cli import bookings as cli_bookings
from ocs_locking.cli.bookings import BadArgument, format_calendar, parse_when

NOW = cal_mod.timegm((2026, 12, 3, 12, 30, 0))      # 2026-12-03 12:30:00 UTC


@pytest.mark.parametrize('text, expected', [
    ('2026-12-04T02:00', ('at', cal_mod.timegm((2026, 12, 4, 2, 0, 0)))),
    ('2026-12-04 02:00:00Z', ('at', cal_mod.timegm((2026, 12, 4, 2, 0, 0)))),
    ('2026-12-04T03:00+01:00', ('at', cal_mod.timegm((2026, 12, 4, 2, 0, 0)))),
    ('13:00', ('at', cal_mod.timegm((2026, 12, 3, 13, 0, 0)))),       # later today (UTC)
    ('02:00', ('at', cal_mod.timegm((2026, 12, 4, 2, 0, 0)))),        # tomorrow
    ('now', ('in', 0.0)),
    ('+30m', ('in', 1800.0)),
    ('+90', ('in', 90.0)),
])
def test_parse_when_reads_utc_times_clock_times_and_relative_ones(text, expected):
    """When a time is ISO-8601 (UTC unless it names a zone), HH:MM (UTC, the
    next such time), now or +AGE, it is an instant or seconds from now."""
    assert parse_when(text, '--start', NOW) == expected


@pytest.mark.parametrize('text, message', [
    ('25:00', r"^--start must be a time of day 00:00..23:59:59 \(UTC\), not '25:00'$"),
    ('tomorrow', r"^--start must be a time \(2025-03-01T02:00 UTC, 02:00, now\) or \+AGE"),
    ('+soon', r"^--start must be a time .* or \+AGE \(\+90, \+30m, \+2h, \+1d\), not"),
    ('', r'^--start must be a time, not'),
])
def test_parse_when_refuses_a_bad_time_in_one_line(text, message):
    """When a time cannot be read, the error names the option in one line."""
    with pytest.raises(BadArgument, match=message):
        parse_when(text, '--start', NOW)


def _args(**kw):
    base = dict(start='+1h', end='+30m', resources=['demo/hwp'], note='', tree=False,
                owner='alice', local=False, json=False, registry='lock-registry')
    return SimpleNamespace(**dict(base, **kw))


def test_window_end_plus_is_after_the_start_and_relative_times_stay_relative():
    """When --end is +D it is D after the start; relative times are sent as
    seconds from now (the registry's clock), absolute ones as instants."""
    assert cli_bookings._window(_args(), NOW) == {'start_in': 3600.0, 'end_in': 5400.0}
    assert cli_bookings._window(_args(start='13:00', end='+1h'), NOW) == {
        'start': NOW + 1800, 'end': NOW + 5400}
    assert cli_bookings._window(_args(start='13:00', end='14:00'), NOW) == {
        'start': NOW + 1800, 'end': NOW + 5400}
    with pytest.raises(BadArgument, match=r'^--end \(13:00\) must be after --start \(14:00\)$'):
        cli_bookings._window(_args(start='14:00', end='13:00'), NOW)


@pytest.fixture
def no_registry(monkeypatch):
    """Fails the test if anything reaches for the registry."""
    def boom(args):
        raise AssertionError('the registry was asked')
    monkeypatch.setattr(cli_bookings, '_calendar', boom)


@pytest.mark.parametrize('argv, message', [
    (['book', 'demo/hwp', '--start', '25:00', '--end', '+1h'], '--start must be a time of day'),
    (['book', 'Demo/HWP', '--start', '+1h', '--end', '+1h'], 'resource segment'),
    (['book', 'demo/hwp', 'demo/hwp', '--start', '+1h', '--end', '+1h'],
     'a RESOURCE is listed twice'),
    (['book', 'demo/hwp', '--start', '+1h', '--end', '+1h', '--owner', ' '],
     '--owner must not be empty'),
    (['next-free', 'demo/hwp', '--length', 'soon'], '--length must be an age'),
    (['unbook', '0', '--claim', 'x'], 'ID must be a booking id >= 1, not 0'),
    (['unbook', '3'], 'give --claim KEY'),
])
def test_bad_booking_arguments_are_one_line_exit_2_and_ask_nothing(no_registry, capsys,
                                                                    monkeypatch, argv,
                                                                    message):
    """When a booking command's argument is bad, one line names it, the exit
    status is 2 and the registry is not asked."""
    monkeypatch.delenv('OCS_LOCKS_CLAIM', raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('ocs-locks: ') and message in err


def test_book_prints_the_id_and_the_claim_key_once(monkeypatch, capsys):
    """When a booking is made, the id and the claim key are printed (the key
    once, on its own line), and the window sent is the parsed one."""
    sent = {}

    class FakeCalendar:
        def book(self, resource, owner, **params):
            sent.update(params, resource=resource, owner=owner)
            return {'booking_id': 7, 'resources': ['demo/hwp'], 'owner': owner,
                    'start': NOW + 3600, 'end': NOW + 5400, 'claim': 'ab' * 16}
    monkeypatch.setattr(cli_bookings, '_calendar', lambda args: FakeCalendar())
    assert cli.main(['book', 'demo/hwp', '--start', '+1h', '--end', '+30m', '--owner',
                     'alice', '--note', 'cal']) == 0
    out = capsys.readouterr().out
    assert out.count('ab' * 16) == 1 and 'booking 7.' in out
    assert 'from 2026-12-03 13:30:00 UTC to 2026-12-03 14:00:00 UTC' in out
    assert sent == {'start_in': 3600.0, 'end_in': 5400.0, 'resource': 'demo/hwp',
                    'owner': 'alice', 'tree': False, 'note': 'cal'}


def test_format_calendar_shows_utc_the_state_and_no_key():
    """When bookings are printed, each is one row: id, resources, owner,
    start and end in UTC, the state (how a finished one ended), the note."""
    rows = [{'booking_id': 3, 'resources': ['demo/hwp'], 'tree': False, 'owner': 'bob',
             'start': NOW, 'end': NOW + 60, 'state': 'booked', 'outcome': '',
             'note': 'cal', 'claimable': True},
            {'booking_id': 4, 'resources': ['satp1'], 'tree': True, 'owner': 'ops',
             'start': NOW + 60, 'end': NOW + 120, 'state': 'done', 'outcome': 'missed',
             'note': ''}]
    text = format_calendar(rows).splitlines()
    assert text[0].split() == ['ID', 'RESOURCES', 'OWNER', 'START', 'END', 'STATE', 'NOTE']
    assert text[1].split() == ['3', 'demo/hwp', 'bob', '2026-12-03', '12:30:00', 'UTC',
                               '2026-12-03', '12:31:00', 'UTC', 'booked', 'cal']
    assert 'satp1 (tree)' in text[2] and 'missed' in text[2]
    assert format_calendar([]) == '(no bookings)'
