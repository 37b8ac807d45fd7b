"""ocs-locks's command line: site options anywhere, no agent-only options, ages."""
import pytest

from ocs_locking.cli import parser as cli_parser
from ocs_locking.cli.parser import AGENT_ONLY, MAX_AGE, make_parser, parse_age
from ocs_locking.errors import CliError

SITE = ['--site-file', 'site.yaml', '--site-host', 'demo', '--registry', 'reg-2']


@pytest.mark.parametrize('command', [['status'], ['watch'], ['reserve', 'a/b'],
                                     ['release', 'a/b', '--lease-id', '0' * 32],
                                     ['force-release', 'a/b', '--reason', 'r'], ['history']])
def test_make_parser_site_options_after_the_command_mean_the_same(command):
    """When the site options come after the command instead of before it,
    the parsed site options are the same."""
    before = make_parser().parse_args(SITE + command)
    after = make_parser().parse_args(command + SITE)
    keys = ('site_file', 'site_host', 'registry', 'site', 'site_hub', 'site_http',
            'site_realm', 'address_root')
    assert {k: getattr(after, k) for k in keys} == {k: getattr(before, k) for k in keys}
    assert (after.site_file, after.site_host, after.registry) == ('site.yaml', 'demo', 'reg-2')


def test_make_parser_defaults_when_no_site_option_is_given():
    """When no site option is given, the registry is lock-registry and the
    site options are None (ocs's site_config then looks at OCS_CONFIG_DIR)."""
    args = make_parser().parse_args(['status'])
    assert args.registry == 'lock-registry'
    assert (args.site, args.site_file, args.site_host) == (None, None, None)


def test_make_parser_help_lists_no_agent_only_ocs_options():
    """When --help is printed, the agent-only ocs options are not in it, and
    they are not accepted; their attributes are None for ocs."""
    text = make_parser().format_help()
    for option in ('--instance-id', '--registry-address', '--log-dir', '--working-dir',
                   '--crossbar-timeout', '--access-policy'):
        assert option not in text
    assert '--site-file' in text and 'before or after the command' in text
    args = make_parser().parse_args(['status'])
    assert all(getattr(args, a) is None for a in AGENT_ONLY)
    with pytest.raises(SystemExit):
        make_parser().parse_args(['--instance-id', 'x', 'status'])


@pytest.mark.parametrize('text,seconds', [('90', 90.0), ('30s', 30.0), ('10m', 600.0),
                                          ('2h', 7200.0), ('1d', 86400.0), ('1.5h', 5400.0),
                                          (' 5 m ', 300.0), ('366d', MAX_AGE)])
def test_parse_age_turns_an_age_into_seconds(text, seconds):
    """When an age is given with or without a unit, it becomes seconds."""
    assert parse_age(text) == seconds


@pytest.mark.parametrize('text,error', [
    ('10 minutes', r"^--since must be an age like 90, 30s, 10m, 2h or 1d, not '10 minutes'$"),
    ('-5m', r'^--since must be an age like'), ('', r'^--since must be an age like'),
    ('2026-12-01', r'^--since must be an age like'), ('nan', r'^--since must be an age like'),
    ('0', r"^--since must be more than 0 and at most 366d, not '0'$"),
    ('367d', r"^--since must be more than 0 and at most 366d, not '367d'$")])
def test_parse_age_refuses_what_is_not_an_age(text, error):
    """When --since is not an age (a date, a negative, zero, too long), one
    line says what an age looks like."""
    with pytest.raises(CliError, match=error):
        parse_age(text)


def test_parser_module_knows_every_client_site_option():
    """When ocs reads the parsed options, every attribute it reads for a
    control client is present."""
    args = make_parser().parse_args(['status'])
    for attr in ('site', 'site_file', 'site_host', 'site_hub', 'site_http', 'site_realm',
                 'address_root', *cli_parser.AGENT_ONLY):
        assert hasattr(args, attr)


def test_history_at_is_a_time_of_day_or_an_age_sent_as_seconds_ago():
    """When --at names a time of day it is the latest such time (today, or
    yesterday if later than now), sent as seconds ago; an age is taken as
    it is; anything else is one line naming --at."""
    import time as _time

    from ocs_locking.cli.parser import parse_at
    now = _time.mktime((2026, 12, 3, 10, 0, 0, 0, 0, -1))
    assert parse_at('09:30', now) == 1800.0
    assert parse_at('09:59:30', now) == 30.0
    assert parse_at('10:30', now) == 86400.0 - 1800.0      # later today: yesterday's
    assert parse_at('2h', now) == 7200.0
    for bad in ('25:00', '9:61', 'noon', ''):
        with pytest.raises(CliError, match='^--at must be a time of day like 03:12'):
            parse_at(bad, now)
