"""Recorded statistics in a real InfluxDB: Debian's influxd on a loopback
port, the demo site with ocs's own InfluxDBAgent (launched with
ocs-agent-cli) recording the registry's lock_stats and alerts feeds, and the
Grafana dashboard's own queries (docs/grafana/ocs-locking.json) run against it."""
import json
import os
import shutil
import time

import pytest
import yaml

from tools.devsite import Site
from tools.influx import InfluxServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(REPO, 'docs', 'grafana', 'ocs-locking.json')
DB = 'ocs_feeds'        # the InfluxDBAgent's default database
WAIT = 90.0             # bound on every wait (records come every 2 s)
LOCK = 'sim-device-1/hw'
LEASE = 'it/influx'

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def influx(tmp_path_factory):
    with InfluxServer(tmp_path_factory.mktemp('influxdb')) as server:
        yield server


def site_config(workdir, influx):
    """The demo site with records every 2 s and an InfluxDBAgent writing to ``influx``."""
    cfg = os.path.join(workdir, 'site-config')
    shutil.copytree(os.path.join(REPO, 'site-config'), cfg)
    path = os.path.join(cfg, 'default.yaml')
    with open(path) as f:
        data = yaml.safe_load(f)
    instances = data['hosts']['demo']['agent-instances']
    registry = next(i for i in instances if i['instance-id'] == 'lock-registry')
    registry['arguments'].append(['--stats-every', 2])
    instances.append({'agent-class': 'InfluxDBAgent', 'instance-id': 'influxagent',
                      'arguments': [['--host', '127.0.0.1'], ['--port', influx.port],
                                    ['--initial-state', 'record']]})
    with open(path, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


@pytest.fixture(scope='module')
def site(tmp_path_factory, influx):
    work = tmp_path_factory.mktemp('influx-site')
    with Site(site_config(str(work), influx), 'demo', work / 'run', port=0,
              teardown='kill') as s:
        yield s


def points(influx, q):
    """The rows of every series of ``q``: [(tags, {column: value})]."""
    out = []
    for result in influx.query(q, db=DB):
        for series in result.get('series', []):
            for values in series['values']:
                out.append((series.get('tags') or {}, dict(zip(series['columns'], values))))
    return out


def wait_points(influx, q, pred, what):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            rows = points(influx, q)
        except Exception:       # the database not created yet
            rows = []
        if pred(rows):
            return rows
        assert time.monotonic() < deadline, f'InfluxDB never had {what}; last {rows[-3:]}'
        time.sleep(0.5)


@pytest.fixture(scope='module')
def recorded(site, influx):
    """Holds and waits on the demo's lock (set_heater borrowing it from acq),
    a site lease held and a refused request for it, recorded."""
    device = site.wait_agent('sim-device-1')
    registry = site.wait_agent('lock-registry')
    for value in (1.0, 2.0, 3.0):
        assert device.set_heater(value=value).session['success']
    assert registry.acquire(resource=LEASE, owner='influx-a', lease=60).session['success']
    refused = registry.acquire(resource=LEASE, owner='influx-b', lease=60)
    assert refused.session['success'] is False
    wait_points(influx, f"SELECT * FROM \"LockRegistryAgent\" WHERE \"feed\" = 'lock_stats' "
                        f"AND \"lock\" = '{LOCK}' AND \"holds\" > 0",
                lambda r: r, 'a lock_stats record with holds')
    wait_points(influx, f"SELECT * FROM \"LockRegistryAgent\" WHERE \"feed\" = 'lock_stats' "
                        f"AND \"lock\" = '{LEASE}' AND \"refused\" > 0 AND \"held\" = 1",
                lambda r: r, 'the lease record with its refusal')
    return registry


def test_lock_stats_of_a_lock_are_in_influxdb_with_their_tags_and_fields(influx, recorded):
    """When the registry records lock_stats and ocs's InfluxDBAgent runs, the
    lock's points are in InfluxDB (measurement LockRegistryAgent, tags feed,
    lock, agent, kind) with hold and wait percentiles and counters."""
    rows = points(influx, f"SELECT * FROM \"LockRegistryAgent\" WHERE \"feed\" = 'lock_stats' "
                          f"AND \"lock\" = '{LOCK}'")
    assert rows
    row = rows[-1][1]
    assert (row['agent'], row['kind'], row['instance_id']) == ('sim-device-1', 'lock',
                                                                'lock-registry')
    for field in ('held', 'waiters', 'held_for', 'acquired', 'timed_out', 'refused', 'alive',
                  'holds', 'hold_p50_s', 'hold_p99_s', 'waits', 'wait_p50_s', 'wait_p99_s'):
        assert field in row, field
    assert max(r['acquired'] for _, r in rows) >= 3
    with_holds = [r for _, r in rows if r['holds']]
    assert with_holds and all(r['hold_p99_s'] >= r['hold_p50_s'] >= 0 for r in with_holds)


def test_lock_stats_of_a_site_lease_count_its_grant_and_refusal(influx, recorded):
    """When a lease is held and another request is refused, the lease's own
    points say held, one grant, the refusal, kind lease."""
    rows = points(influx, f"SELECT * FROM \"LockRegistryAgent\" WHERE \"feed\" = 'lock_stats' "
                          f"AND \"lock\" = '{LEASE}'")
    last = rows[-1][1]
    assert (last['kind'], last['agent'], last['held']) == ('lease', 'site-lease', 1)
    assert last['acquired'] >= 1 and last['refused'] >= 1
    assert any(r['waits'] >= 1 for _, r in rows)


def test_alerts_are_recorded_one_block_per_kind(influx, recorded):
    """When the registry records its alerts feed, InfluxDB has one series
    per kind (tag alert) with fields count and worst_s."""
    rows = wait_points(influx, "SELECT * FROM \"LockRegistryAgent\" WHERE \"feed\" = 'alerts'",
                       lambda r: {x['alert'] for _, x in r} >= {'stuck', 'silent', 'expiring'},
                       'the three alert kinds')
    assert all(isinstance(x['count'], (int, float)) and 'worst_s' in x for _, x in rows)


def dashboard_queries():
    with open(DASHBOARD) as f:
        board = json.load(f)
    return [(p['title'], t['query']) for p in board['panels'] for t in p['targets']]


def test_every_grafana_panel_query_answers_for_the_demo_site(influx, recorded):
    """When the Grafana dashboard's queries run (as Grafana's InfluxDB data
    source would: $timeFilter and $__interval filled in), each answers with
    data, and the hold, wait and holder panels have the demo's lock."""
    queries = dashboard_queries()
    assert {t for t, _ in queries} == {'Hold time p99 (s)', 'Wait time p99 (s)',
                                       'Refusals per minute', 'Holders over time',
                                       'Alerts: stuck, silent, expiring'}
    want = {'Hold time p99 (s)': {LOCK}, 'Holders over time': {LOCK, LEASE},
            'Wait time p99 (s)': {LEASE}, 'Refusals per minute': {LEASE}}
    for title, q in queries:
        q = q.replace('$timeFilter', 'time > now() - 1h').replace('$__interval', '2s')
        # a rate needs two records of a series: wait for them (records every 2 s)
        wait_points(influx, q, lambda rows: rows and want.get(title, set()) <= {
            tags.get('lock') for tags, _ in rows}, f'an answer to the {title!r} panel')
