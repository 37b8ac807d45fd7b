"""The live page for real: the demo site (crossbar serving ocs_locking/web at
/locks/, the registry and the simulated devices under ocs-agent-cli) and a
headless Debian chromium driven by Playwright (``make browser`` installs
it; Playwright's own browsers are never downloaded).

Every wait is on the page's DOM (``wait_for_selector`` / ``expect`` with a
bounded timeout) or on a process's output, never a sleep.

``OCS_LOCKING_PAGE_SHOT=1`` also writes the screenshot the tests take to
docs/_static/page.png (the one the operators guide shows).
"""
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from ocs.ocs_client import OCSClient

from tests.support import reserve_process
from tools.devsite import Site

import playwright.sync_api as playwright_api  # noqa: E402  (setup.cfg's test extras)
expect = playwright_api.expect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
SHOT = os.path.join(REPO, 'docs', '_static', 'page.png')
#: Debian's chromium: the binary itself (/usr/bin/chromium is a shell wrapper)
CHROMIUM = next((p for p in ('/usr/lib/chromium/chromium', '/usr/bin/chromium')
                 if os.path.exists(p)), None)
PASSWORD = 'demo-operator'      # the demo registry's level-2 password (site-config)
WAIT_MS = 15000                 # bound on a page wait that is not a latency claim

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('site'), port=0, teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def browser():
    # make test installs it (make browser): a missing browser fails, never skips
    assert CHROMIUM is not None, 'no chromium: run `make browser` (Debian\'s chromium)'
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        yield b
        b.close()


class Console(list):
    """What the page wrote to its console, and its uncaught errors."""

    def text(self):
        return '\n'.join(self)


def open_page(browser, site, **context):
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.console = Console()
    page.on('console', lambda m: page.console.append(f'{m.type}: {m.text}'))
    page.on('pageerror', lambda e: page.console.append(f'pageerror: {e}'))
    reply = page.goto(site.page_url)
    assert reply.status == 200
    page.wait_for_selector('#conn[data-state="live"]', timeout=WAIT_MS)
    return page


@pytest.fixture()
def page(browser, site):
    page = open_page(browser, site)
    yield page
    page.context.close()


def lock_row(page, key):
    return page.locator(f'#locks tr[data-lock="{key}"]')


def lease_row(page, resource):
    return page.locator(f'#leases tr[data-resource="{resource}"]')


def ocs_locks(site, *args):
    proc = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_page_is_served_by_the_router_and_shows_the_demo_locks(site, page):
    """When the page is opened at the banner's address, crossbar serves it
    (no cache), it joins the router and shows both demo locks held by acq,
    their agents alive, with nothing on its console."""
    import urllib.request
    assert site.page_url == f'http://127.0.0.1:{site.port}/locks/'
    with urllib.request.urlopen(site.page_url + 'locks.js', timeout=10) as r:
        assert r.headers['Cache-Control'] == 'max-age=0, public'
    for key in ('sim-device-1/hw', 'sim-device-2/hw'):
        row = lock_row(page, key)
        expect(row.locator('td.holder')).to_contain_text(re.compile(r'^acq \(session \d+\)'),
                                                         timeout=WAIT_MS)
        expect(row.locator('td.agent')).to_have_text(f'{key.split("/")[0]} alive')
    assert page.console == [], page.console.text()


def test_a_set_heater_shows_on_the_page_within_a_second(site, page):
    """When set_heater (OCSClient, over HTTP) takes sim-device-1's lock from
    acq, the page shows it among the lock's recent holders, with its
    session, within a second of the reply."""
    client = OCSClient('sim-device-1', args=site.client_args)
    expect(lock_row(page, 'sim-device-1/hw').locator('td.holder')).to_contain_text(
        'acq', timeout=WAIT_MS)
    reply = client.set_heater(value=12.5)
    replied = time.monotonic()
    assert reply.session['success'], reply
    sid = reply.session['session_id']
    page.wait_for_selector(f'#locks tr[data-lock="sim-device-1/hw"] .recent:has-text('
                           f'"set_heater (session {sid})")', timeout=1000)
    assert time.monotonic() - replied < 1.0


def test_the_page_draws_each_ownership_message_within_100_ms(site, page):
    """When set_heater runs a few times, every ownership message the page
    draws is on the screen within 100 ms (median) of the registry
    stamping it (its ``timestamp``; one host, one clock)."""
    client = OCSClient('sim-device-1', args=site.client_args)
    page.evaluate('window.ocsLocksPage.state.latency.length = 0')
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert client.set_heater(value=value).session['success']
    page.wait_for_function('window.ocsLocksPage.state.latency.length >= 5', timeout=WAIT_MS)
    latency = sorted(page.evaluate('window.ocsLocksPage.state.latency'))
    assert latency[len(latency) // 2] < 0.1, latency


def test_a_rows_flags_and_a_stale_agent_are_shown(page):
    """When a row carries flags (stuck, silent, deadlock) and its agent is
    stale, the page shows each flag and the agent as stale; a removal takes
    the row away (drawn and read in one turn: no snapshot in between)."""
    shown = page.evaluate("""() => {
        const p = window.ocsLocksPage;
        p.draw({kind: 'change', seq: 1, rows: [{lock: 'ghost/hw', agent: 'ghost', name: 'hw',
                job: 'acq', session_id: 3, held_for: 12, waiters: 2, alive: false,
                queue: [{job: 'set_heater', session_id: 4, waited_for: 1.5}],
                flags: ['stuck', 'silent', 'deadlock']}], removed: []});
        const tr = document.querySelector('#locks tr[data-lock="ghost/hw"]');
        const out = {flags: Array.from(tr.querySelectorAll('td.flags .flag'), e => e.textContent),
                     deadlock: getComputedStyle(tr.querySelector('.flag-deadlock')).fontWeight,
                     agent: tr.querySelector('td.agent').textContent,
                     queue: tr.querySelector('td.waiters ol').textContent};
        p.draw({kind: 'change', seq: 2, rows: [], removed: ['ghost/hw']});
        out.gone = document.querySelector('#locks tr[data-lock="ghost/hw"]') === null;
        return out;
    }""")
    # a deadlock stands out (bold, dark): see ocs_locking/web/locks.css
    assert shown == {'flags': ['stuck', 'silent', 'deadlock'], 'deadlock': '700',
                     'agent': 'ghost stale',
                     'queue': 'set_heater (session 4) waited 1.5 s', 'gone': True}


def test_lock_history_rows_and_lease_audit_rows_become_timeline_spans(page):
    """When the history task answers (kind 'lock' rows of a registry that
    keeps lock history, or a resource's audit rows), the page cuts them
    into spans of the last hour: open ones last until now, a release
    without its grant in the hour starts at the hour's start."""
    spans = page.evaluate("""() => {
        const p = window.ocsLocksPage, from = 1000, to = 4600;
        const locks = p.lockSpans([
            {kind: 'lock', at: 1200, lock: 'a/hw', job: 'acq', session_id: 0, start: 500,
             end: 1200, outcome: 'released'},
            {kind: 'lock', at: 4000, lock: 'a/hw', job: 'set_heater', session_id: 7,
             start: 4000, end: null},
            {kind: 'lease', at: 3000, action: 'grant'}], from, to);
        const leases = p.leaseSpans([
            {at: 1500, action: 'release', resource: 'r', owner: 'bob', token: 1},
            {at: 2000, action: 'grant', resource: 'r', owner: 'amy', token: 2},
            {at: 2100, action: 'renew', resource: 'r', owner: 'amy', token: 2},
            {at: 2500, action: 'force_release', resource: 'r', owner: 'op', token: 2},
            {at: 3000, action: 'grant', resource: 'r', owner: 'cat', token: 3},
            {at: 3100, action: 'refuse', resource: 'r', owner: 'dan', ok: false}], from, to);
        const box = p.timeline(locks, from, to, 'none');
        return {locks: locks.map(s => [s.start, s.end, s.open, s.label]),
                leases: leases.map(s => [s.start, s.end, s.outcome, s.label]),
                drawn: box.querySelectorAll('.timeline .span').length};
    }""")
    assert spans['locks'] == [[1000, 1200, False, 'acq (session 0)'],
                              [4000, 4600, True, 'set_heater (session 7)']]
    assert spans['leases'] == [[1000, 1500, 'released', 'bob (token 1)'],
                               [2000, 2500, 'revoked', 'amy (token 2)'],
                               [3000, 4600, 'held', 'cat (token 3)']]
    assert spans['drawn'] == 2


def test_a_link_cannot_point_the_page_at_another_router(site, browser):
    """When the page's address names a WebSocket on another host, the page
    still joins its own origin's router (the password typed there goes
    nowhere else); the registry and realm it talks to are in its header."""
    page = browser.new_page()
    try:
        page.goto(site.page_url + '?ws=ws://evil.example:1/ws')
        page.wait_for_selector('#conn[data-state="live"]', timeout=WAIT_MS)
        assert page.evaluate('window.ocsLocksPage.config.ws') == \
            f'ws://127.0.0.1:{site.port}/ws'
        assert page.text_content('#where') == 'lock-registry in test_realm'
    finally:
        page.close()


def test_a_reservation_from_the_cli_shows_and_a_force_release_from_the_page_revokes_it(
        site, page):
    """When `ocs-locks reserve` holds page/cli, the page shows its owner and
    note; a force-release from the page (reason and the level-2 password
    asked on the page) revokes it: the CLI's reservation is lost, `ocs-locks
    leases` no longer lists it, and the password is nowhere on the page nor
    its console."""
    with reserve_process(site, 'page/cli', '--lease', '60', '--note', 'from the cli',
                         '--owner', 'carol') as r:
        line = r.proc.stdout.readline()
        assert line.startswith("Reserved page/cli for 'carol'"), \
            line + (r.proc.stderr.read() if r.proc.poll() is not None else '')
        row = lease_row(page, 'page/cli')
        expect(row.locator('td.owner')).to_have_text('carol', timeout=WAIT_MS)
        expect(row.locator('td.note')).to_have_text('from the cli')
        row.locator('button[data-action="force"]').click()
        page.fill('#force-form input[name="reason"]', 'page test')
        page.fill('#force-form input[name="password"]', PASSWORD)
        page.click('#force-submit')
        expect(row).to_have_count(0, timeout=WAIT_MS)
        expect(page.locator('#message')).to_contain_text('Revoked page/cli from carol')
        assert r.proc.wait(30) == 1         # its reservation was lost
    assert 'lost the reservation of page/cli' in r.err
    assert 'page/cli' not in ocs_locks(site, 'leases')
    assert page.input_value('#force-form input[name="password"]') == ''
    assert PASSWORD not in page.content()
    assert PASSWORD not in page.console.text()


def test_a_wrong_password_is_refused_and_the_lease_stays(site, page):
    """When the password is not a level-2 one, the registry refuses the
    force-release in one line on the page and the lease stays; a dialog
    closed with Escape keeps no password either."""
    with reserve_process(site, 'page/kept', '--lease', '60', '--owner', 'dave') as r:
        assert r.proc.stdout.readline().startswith("Reserved page/kept for 'dave'")
        row = lease_row(page, 'page/kept')
        # a dialog left with Escape keeps no password
        row.locator('button[data-action="force"]').click(timeout=WAIT_MS)
        page.fill('#force-form input[name="password"]', PASSWORD)
        page.keyboard.press('Escape')
        expect(page.locator('#force')).not_to_be_visible()
        expect(page.locator('#force-form input[name="password"]')).to_have_value('')
        row.locator('button[data-action="force"]').click()
        page.fill('#force-form input[name="reason"]', 'page test')
        page.fill('#force-form input[name="password"]', 'not-it')
        page.click('#force-submit')
        expect(page.locator('#message')).to_contain_text('Force-release refused',
                                                         timeout=WAIT_MS)
        assert 'page/kept' in ocs_locks(site, 'leases')
        expect(row).to_have_count(1)


def test_reserve_and_release_from_the_page_reach_ocs_locks_status(site, page):
    """When the page reserves page/mine, `ocs-locks status` lists the lease
    (the owner and note given on the page), the page marks it as its own and
    draws it in its timeline; when the page releases it, `ocs-locks status`
    no longer lists it, and its history (looked up by name) ends released."""
    page.fill('#reserve input[name="resource"]', 'page/mine')
    page.fill('#reserve input[name="owner"]', 'erin')
    page.fill('#reserve input[name="note"]', 'from the page')
    page.fill('#reserve input[name="lease"]', '30')
    page.click('#reserve button[type="submit"]')
    row = lease_row(page, 'page/mine')
    expect(row).to_have_attribute('data-mine', 'yes', timeout=WAIT_MS)
    expect(row.locator('td.owner')).to_have_text('erin (this page)')
    status = ocs_locks(site, 'status')
    assert re.search(r'page/mine\s+erin\s+\d+', status), status
    assert 'from the page' in status
    row.locator('button[data-action="history"]').click()
    expect(page.locator('#detail .timeline .span.open')).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator('#detail ol.spans')).to_contain_text('erin (token')
    row.locator('button[data-action="release"]').click()
    expect(row).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator('#message')).to_contain_text('Released')
    assert 'page/mine' not in ocs_locks(site, 'status')
    # its hour, looked up by name now that no row shows it
    page.fill('#lookup input[name="target"]', 'page/mine')
    page.click('#lookup button[value="history"]')
    expect(page.locator('#detail ol.spans')).to_contain_text(
        re.compile(r'erin \(token \d+\) [\d.]+ m?s released'), timeout=WAIT_MS)
    expect(page.locator('#detail .timeline .span.open')).to_have_count(0)
    assert page.console == [], page.console.text()


def test_a_lease_nobody_renews_is_flagged_expiring_then_goes(site, page):
    """When a lease is taken with the registry's acquire task (no lease_id:
    nobody can renew it) for 12 s, the page flags it expiring once less than
    a quarter is left, then drops it when it expires."""
    registry = OCSClient('lock-registry', args=site.client_args)
    reply = registry.acquire(resource='page/expiring', owner='hal', lease=12.0)
    assert reply.session['success'], reply
    row = lease_row(page, 'page/expiring')
    expect(row.locator('td.owner')).to_have_text('hal', timeout=WAIT_MS)
    expect(row.locator('td.left .flag-expiring')).to_have_text('expiring', timeout=WAIT_MS)
    expect(row).to_have_count(0, timeout=WAIT_MS)


def test_why_answers_for_a_lock_row_and_for_a_name_looked_up(page):
    """When why is clicked on a lock, or asked for a resource by name, the
    page shows the registry's answer; a bad name is refused in one line."""
    lock_row(page, 'sim-device-2/hw').locator('button[data-action="why"]').click(
        timeout=WAIT_MS)
    expect(page.locator('#detail-body')).to_contain_text(
        re.compile(r'sim-device-2/hw is held by acq \(session \d+\)'), timeout=WAIT_MS)
    page.fill('#lookup input[name="target"]', 'demo/sim-device-2')
    page.click('#lookup button[value="why"]')
    expect(page.locator('#detail-title')).to_have_text('why demo/sim-device-2')
    expect(page.locator('#detail-body li').first).to_contain_text('demo/sim-device-2',
                                                                  timeout=WAIT_MS)
    page.fill('#lookup input[name="target"]', 'no such thing')
    page.click('#lookup button[value="why"]')
    expect(page.locator('#detail-body p.bad')).to_be_visible(timeout=WAIT_MS)


def test_the_history_of_a_lock_is_a_timeline_of_its_holds(site, page):
    """When history is clicked on a lock, the page shows the lock's last
    hour from the registry's lock history (the history task's kind='lock'):
    acq's hold, still open, and a set_heater that borrowed the lock, released.
    (A registry without lock history refuses the parameter: the page then
    says "no lock history on this registry".)"""
    client = OCSClient('sim-device-1', args=site.client_args)
    sid = client.set_heater(value=3.0).session['session_id']
    lock_row(page, 'sim-device-1/hw').locator('button[data-action="history"]').click(
        timeout=WAIT_MS)
    spans = page.locator('#detail ol.spans')
    expect(spans).to_contain_text(
        re.compile(rf'set_heater \(session {sid}\) [\d.]+ m?s released'), timeout=WAIT_MS)
    expect(spans).to_contain_text(re.compile(r'-now acq \(session \d+\) .* open'))
    expect(page.locator('#detail .timeline .span.open')).to_have_count(1)


def test_on_a_phone_nothing_overflows_sideways(site, browser, tmp_path):
    """When the page is opened on a phone-sized screen (375 x 667) with a
    lease held and an answer open, nothing is wider than the screen. A
    screenshot of the page on a desktop screen is taken too."""
    with contextlib.ExitStack() as stack:
        r = stack.enter_context(reserve_process(
            site, 'page/phone', '--lease', '60', '--owner', 'frank',
            '--note', 'a rather long note that must wrap on a phone'))
        assert r.proc.stdout.readline().startswith("Reserved page/phone for 'frank'")
        # then a request that waits behind it (started once frank holds it)
        stack.enter_context(reserve_process(site, 'page/phone', '--lease', '60', '--owner',
                                            'grace', '--timeout', '60', '--note', 'next'))
        phone = open_page(browser, site, viewport={'width': 375, 'height': 667},
                          device_scale_factor=2, is_mobile=True, has_touch=True)
        try:
            expect(lease_row(phone, 'page/phone')).to_have_count(1, timeout=WAIT_MS)
            expect(phone.locator('#waiting li')).to_contain_text('grace for page/phone',
                                                                timeout=WAIT_MS)
            lock_row(phone, 'sim-device-1/hw').locator('button[data-action="why"]').click()
            expect(phone.locator('#detail-body li').first).to_be_visible(timeout=WAIT_MS)
            width, inner = phone.evaluate(
                '[document.scrollingElement.scrollWidth, window.innerWidth]')
            assert width <= inner, (width, inner)
            phone.screenshot(path=str(tmp_path / 'phone.png'), full_page=True)
        finally:
            phone.context.close()
        desk = open_page(browser, site, viewport={'width': 1100, 'height': 760})
        try:
            expect(lease_row(desk, 'page/phone').locator('td.queue')).to_have_text(
                '1', timeout=WAIT_MS)
            OCSClient('sim-device-1', args=site.client_args).set_heater(value=20.0)
            expect(lock_row(desk, 'sim-device-1/hw').locator('.recent')).to_contain_text(
                'set_heater', timeout=WAIT_MS)
            lock_row(desk, 'sim-device-1/hw').locator('button[data-action="history"]').click()
            expect(desk.locator('#detail ol.spans')).to_contain_text('set_heater',
                                                                    timeout=WAIT_MS)
            shot = tmp_path / 'page.png'
            desk.screenshot(path=str(shot), full_page=True)
        finally:
            desk.context.close()
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    if os.environ.get('OCS_LOCKING_PAGE_SHOT') == '1':
        shutil.copy(shot, SHOT)


def test_the_page_follows_a_restarted_registry(site, page):
    """When the registry is killed and started again (a new WAMP session:
    the bus's verified publisher changes), the page takes the new
    registry's status and follows its feed again: a set_heater shows."""
    expect(lock_row(page, 'sim-device-1/hw')).to_have_count(1, timeout=WAIT_MS)
    site.kill_agent('lock-registry')
    site.start_agent('lock-registry')
    site.wait_agent('lock-registry')
    client = OCSClient('sim-device-1', args=site.client_args)
    deadline = time.monotonic() + 30
    while True:     # until the new registry has the lock again and the page shows it
        sid = client.set_heater(value=7.0).session['session_id']
        try:
            page.wait_for_selector(f'#locks tr[data-lock="sim-device-1/hw"] .recent:has-text('
                                   f'"set_heater (session {sid})")', timeout=2000)
            break
        except playwright_api.TimeoutError:
            assert time.monotonic() < deadline, page.text_content('header')
    expect(page.locator('#conn')).to_have_attribute('data-state', 'live')
