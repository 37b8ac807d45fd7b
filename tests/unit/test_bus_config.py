"""ocs_locking.bus.config and ``ocs-locks crossbar-config``: the rewrite of a
crossbar config (ocs's generated shape, idempotent, bad input)."""
import json
import os

import pytest

from ocs_locking.bus import config as bc
from ocs_locking.bus import rules
from ocs_locking.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOCK = os.path.join(REPO, 'site-config', 'crossbar', 'stock.json')
DEMO = os.path.join(REPO, 'site-config', 'crossbar', 'config.json')


def ocs_generated(realm='my_realm', root='observatory', port=8001):
    """ocs's shipped template filled in as ocs fills it in."""
    import ocs
    path = os.path.join(os.path.dirname(ocs.__file__), 'support', 'crossbar_config.json')
    with open(path) as f:
        text = f.read()
    text = text.replace('{realm}', realm).replace('{address_root}', root)
    return json.loads(text.replace('{port}', str(port)))


def load(path):
    with open(path) as f:
        return json.load(f)


#: the live page's path as the rewrite adds it
PAGE = {'type': 'static', 'package': 'ocs_locking.web', 'resource': '.',
        'options': {'cache_timeout': 0}}


def roles(cfg, realm=0):
    return {r['name']: r for r in cfg['workers'][0]['realms'][realm]['roles']}


def test_ocs_generated_config_gets_the_component_its_role_the_authorizer_and_disclosure():
    cfg = bc.rewrite(ocs_generated(), address_root='observatory', registry='reg')
    worker = cfg['workers'][0]
    assert worker['components'] == [{
        'type': 'class', 'classname': bc.COMPONENT_CLASS, 'realm': 'my_realm',
        'role': bc.COMPONENT_ROLE, 'extra': {'address_root': 'observatory', 'registry': 'reg'}}]
    r = roles(cfg)
    assert r['iocs_agent'] == {'name': 'iocs_agent', 'authorizer': rules.AUTHORIZE_URI}
    controller = r['iocs_controller']['permissions']
    assert all(p['disclose'] == {'caller': True, 'publisher': True} for p in controller)
    assert controller[0]['allow'] == {'call': True, 'register': False, 'publish': True,
                                      'subscribe': True}     # ocs's static rights kept
    info = [p for p in controller if p['uri'] == rules.INFO_URI]
    assert info and info[0]['allow']['call'] and info[0]['match'] == 'exact'
    assert worker['options'] == {'pythonpath': ['..']}      # ocs's own option untouched
    transports = ocs_generated()['workers'][0]['transports']
    transports[0]['paths']['locks'] = PAGE         # the live page, beside the websocket
    assert worker['transports'] == transports


def test_the_components_role_has_exact_permissions_and_no_prefix():
    own = roles(bc.rewrite(ocs_generated()))[bc.COMPONENT_ROLE]['permissions']
    assert all(p['match'] == 'exact' for p in own)
    granted = {(p['uri'], a) for p in own for a, on in p['allow'].items() if on}
    assert granted == {
        (rules.AUTHORIZE_URI, 'register'), (rules.INFO_URI, 'register'),
        ('wamp.registration.on_create', 'subscribe'),
        ('wamp.registration.on_unregister', 'subscribe'),
        ('wamp.registration.on_delete', 'subscribe'), ('wamp.session.on_leave', 'subscribe'),
        ('wamp.registration.list', 'call'), ('wamp.registration.get', 'call'),
        ('wamp.registration.lookup', 'call'), ('wamp.registration.list_callees', 'call')}


@pytest.mark.parametrize('make', [ocs_generated, lambda: load(STOCK)])
def test_rewriting_twice_is_rewriting_once(make):
    once = bc.rewrite(make())
    assert bc.rewrite(once) == once
    assert bc.rewrite(bc.add_pythonpath(once, '/x')) == bc.add_pythonpath(once, '/x')


def test_options_change_the_component_not_the_number_of_entries():
    once = bc.rewrite(ocs_generated())
    again = bc.rewrite(once, address_root='site', registry='other')
    assert len(again['workers'][0]['components']) == 1
    assert again['workers'][0]['components'][0]['extra'] == {'address_root': 'site',
                                                              'registry': 'other'}
    assert [r['name'] for r in again['workers'][0]['realms'][0]['roles']].count(
        bc.COMPONENT_ROLE) == 1


def test_the_demo_config_is_the_rewritten_stock_config():
    """site-config/crossbar/config.json is what the command makes of stock.json."""
    assert load(DEMO) == bc.rewrite(load(STOCK))


def test_the_input_is_not_modified():
    cfg = ocs_generated()
    before = json.dumps(cfg, sort_keys=True)
    bc.rewrite(cfg)
    assert json.dumps(cfg, sort_keys=True) == before


def test_add_pythonpath_only_on_the_workers_running_the_component():
    cfg = bc.rewrite(load(STOCK))
    cfg['workers'].append({'type': 'container'})
    out = bc.add_pythonpath(cfg, '/code')
    assert out['workers'][0]['options']['pythonpath'] == ['/code']
    assert 'options' not in out['workers'][1]
    assert bc.add_pythonpath(out, '/code') == out


def test_several_realms_need_a_realm_name():
    cfg = ocs_generated()
    realm2 = dict(json.loads(json.dumps(cfg['workers'][0]['realms'][0])), name='other')
    cfg['workers'][0]['realms'].append(realm2)
    with pytest.raises(bc.ConfigError, match=r'2 realms .*--realm'):
        bc.rewrite(cfg)
    out = bc.rewrite(cfg, realm='my_realm')
    assert roles(out, 1)['iocs_agent'].get('authorizer') is None


@pytest.mark.parametrize('cfg, message', [
    ({'version': 2}, 'no "workers" list'),
    ({'workers': [{'type': 'container'}]}, 'no router worker'),
    ({'workers': [{'type': 'router'}, {'type': 'router'}]}, '2 router workers'),
    ({'workers': [{'type': 'router', 'realms': []}]}, 'has no realms'),
    ({'workers': [{'type': 'router', 'realms': [{'name': 'r', 'roles': {}}]}]},
     '"roles" is not a list'),
    ({'workers': [{'type': 'router', 'realms': [{'name': 'r', 'roles': []}]}]},
     "no agents' role"),
    ([1, 2], 'a JSON object'),
])
def test_configs_it_cannot_rewrite_are_one_line_errors(cfg, message):
    with pytest.raises(bc.ConfigError, match=message) as e:
        bc.rewrite(cfg)
    assert '\n' not in str(e.value)


def test_a_role_with_another_authorizer_is_refused():
    cfg = ocs_generated()
    cfg['workers'][0]['realms'][0]['roles'][0] = {'name': 'iocs_agent', 'authorizer': 'x.auth'}
    with pytest.raises(bc.ConfigError, match="already has the authorizer 'x.auth'"):
        bc.rewrite(cfg)


def test_a_websocket_role_the_realm_does_not_define_is_refused():
    cfg = ocs_generated()
    cfg['workers'][0]['transports'][0]['paths']['ws']['auth']['anonymous']['role'] = 'ghost'
    with pytest.raises(bc.ConfigError, match="assigns role 'ghost'"):
        bc.rewrite(cfg)


@pytest.mark.parametrize('kwargs', [{'address_root': 'a.b'}, {'registry': ''},
                                    {'registry': None}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(bc.ConfigError):
        bc.rewrite(ocs_generated(), **kwargs)


def test_parse_names_the_problem():
    with pytest.raises(bc.ConfigError, match='f.json is not valid JSON: .*line 1'):
        bc.parse('{"workers": [', where='f.json')
    with pytest.raises(bc.ConfigError, match='not list'):
        bc.parse('[]')


# -- the live page --------------------------------------------------------------------

def test_the_page_is_served_beside_the_websocket_only_and_twice_is_once():
    cfg = ocs_generated()
    cfg['workers'][0]['transports'].append({'type': 'web', 'paths': {'/': {'type': 'static'}}})
    cfg['workers'].append({'type': 'container', 'transports': [{'type': 'web', 'paths': {
        'ws': {'type': 'websocket'}}}]})
    out = bc.add_page(cfg)
    assert out['workers'][0]['transports'][0]['paths']['locks'] == PAGE
    assert 'locks' not in out['workers'][0]['transports'][1]['paths']   # no websocket there
    assert out['workers'][1] == cfg['workers'][1]                       # not a router
    assert bc.add_page(out) == out
    assert bc.page_paths(out) == ['locks']
    assert bc.page_paths(bc.add_page(cfg, 'page')) == ['page']
    assert bc.page_paths(bc.rewrite(ocs_generated(), page=None)) == []
    assert 'the live page at /locks/' in bc.summary(bc.rewrite(ocs_generated()))


@pytest.mark.parametrize('path', ['', 'a/b', ' locks', None, 3])
def test_a_page_path_that_is_not_one_url_component_is_refused(path):
    with pytest.raises(bc.ConfigError, match='the page path must be one URL component'):
        bc.add_page(ocs_generated(), path)


def test_a_path_of_that_name_that_is_not_the_page_is_refused():
    cfg = ocs_generated()
    cfg['workers'][0]['transports'][0]['paths']['locks'] = {'type': 'static', 'directory': 'x'}
    with pytest.raises(bc.ConfigError, match="already has a path 'locks' that is not the live"):
        bc.add_page(cfg)


def test_command_page_options(tmp_path):
    src, out = tmp_path / 'in.json', tmp_path / 'out.json'
    src.write_text(json.dumps(ocs_generated()))
    assert main(['crossbar-config', str(src), str(out), '--page', 'status']) == 0
    assert bc.page_paths(json.loads(out.read_text())) == ['status']
    assert main(['crossbar-config', str(src), str(out), '--no-page']) == 0
    assert bc.page_paths(json.loads(out.read_text())) == []


def test_page_url_names_only_what_differs_from_the_pages_defaults():
    from ocs_locking.web import page_url
    assert page_url('127.0.0.1', 18001) == 'http://127.0.0.1:18001/locks/'
    assert page_url('h', 1, realm='my realm', registry='reg', path='p') == \
        'http://h:1/p/?realm=my+realm&registry=reg'
    assert page_url('h', 1, address_root='site') == 'http://h:1/locks/?root=site'


def test_the_page_defaults_are_the_ones_locks_js_assumes():
    from ocs_locking.web import DEFAULTS
    with open(os.path.join(REPO, 'ocs_locking', 'web', 'locks.js')) as f:
        js = f.read()
    for key, value in DEFAULTS:
        assert f"query.get('{key}') || '{value}'" in js


# -- the command ------------------------------------------------------------------------

def test_command_writes_the_rewrite_and_running_it_twice_is_once(tmp_path, capsys):
    src = tmp_path / 'in.json'
    src.write_text(json.dumps(ocs_generated()))
    out1, out2 = tmp_path / 'o1.json', tmp_path / 'o2.json'
    assert main(['crossbar-config', str(src), str(out1), '--registry', 'reg']) == 0
    assert main(['crossbar-config', str(out1), str(out2), '--registry', 'reg']) == 0
    assert out1.read_text() == out2.read_text()
    assert json.loads(out1.read_text()) == bc.rewrite(ocs_generated(), registry='reg')
    lines = capsys.readouterr().out.splitlines()
    assert "realm 'my_realm'" in lines[0] and 'unchanged' in lines[1]


def test_command_options_address_root_realm_pythonpath(tmp_path):
    src, out = tmp_path / 'in.json', tmp_path / 'out.json'
    src.write_text(json.dumps(ocs_generated(root='site')))
    assert main(['crossbar-config', str(src), str(out), '--address-root', 'site',
                 '--realm', 'my_realm', '--pythonpath', str(tmp_path)]) == 0
    worker = json.loads(out.read_text())['workers'][0]
    assert worker['components'][0]['extra']['address_root'] == 'site'
    assert worker['options']['pythonpath'][0] == str(tmp_path)


@pytest.mark.parametrize('content, message', [
    (None, 'cannot read crossbar config .*missing.json: No such file'),
    ('{"workers": [', r'is not valid JSON: .*line 1 column'),
    ('{"version": 2, "workers": []}', 'no router worker'),
    (b'\xff\xfe', 'cannot read crossbar config'),
])
def test_command_bad_files_are_one_line_errors(tmp_path, capsys, content, message):
    import re
    src = tmp_path / ('missing.json' if content is None else 'in.json')
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content is not None:
        src.write_text(content)
    out = tmp_path / 'out.json'
    assert main(['crossbar-config', str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and re.search(message, err), err
    assert not out.exists()


def test_command_unwritable_output_is_one_line_error(tmp_path, capsys):
    src = tmp_path / 'in.json'
    src.write_text(json.dumps(ocs_generated()))
    assert main(['crossbar-config', str(src), str(tmp_path / 'no' / 'out.json')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('ocs-locks: cannot write') and err.count('\n') == 1


# -- the devsite's config generator (tools.siteconfig) ----------------------------------

def test_devsite_config_puts_the_checkouts_package_on_the_routers_path_only_for_the_bus(
        tmp_path):
    from tools import siteconfig
    bus = siteconfig.crossbar_config(load(DEMO), 18011)
    assert bus['workers'][0]['options']['pythonpath'] == [siteconfig.CODE_DIR]
    stock = siteconfig.crossbar_config(load(siteconfig.stock_crossbar_config()), 18011)
    assert 'options' not in stock['workers'][0]
    assert 'components' not in stock['workers'][0]
    link = siteconfig.link_code(str(tmp_path))
    import ocs_locking
    assert os.path.realpath(link) == os.path.dirname(os.path.realpath(ocs_locking.__file__))
    assert os.listdir(os.path.dirname(link)) == ['ocs_locking']
    assert siteconfig.link_code(str(tmp_path)) == link      # again: unchanged


def test_devsite_config_gives_the_component_the_sites_address_root():
    from tools import siteconfig
    cfg = siteconfig.crossbar_config(load(DEMO), 18011, address_root='site')
    assert cfg['workers'][0]['components'][0]['extra'] == {'address_root': 'site',
                                                          'registry': 'lock-registry'}
    assert load(DEMO)['workers'][0]['components'][0]['extra']['address_root'] == 'observatory'
