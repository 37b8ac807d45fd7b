"""ocs-locks status without a router: reading every page, the bus line."""
import pytest

from ocs_locking.cli.formatters import bus_lines
from ocs_locking.cli.status import MAX_PAGES, read_pages


def pager(total, size):
    rows = [{'lock': f'a/{i:05d}'} for i in range(total)]
    calls = []

    def call(offset):
        calls.append(offset)
        return {'locks': rows[offset:offset + size], 'total': total, 'offset': offset}
    return rows, calls, call


def test_read_pages_reads_every_row_of_a_paged_table():
    """When the table has more rows than a page, every page is read, in order,
    until total rows came."""
    rows, calls, call = pager(1234, 500)
    got, last = read_pages(call)
    assert got == rows and calls == [0, 500, 1000] and last['total'] == 1234


def test_read_pages_stops_at_an_empty_page_and_at_the_bound():
    """When the table shrinks while it is read (an empty page), reading
    stops; a registry that always answers with more is read at most
    MAX_PAGES times."""
    _, calls, call = pager(10, 5)
    assert read_pages(lambda offset: {'locks': [], 'total': 99})[0] == []
    endless = []
    read_pages(lambda offset: endless.append(offset) or {'locks': [{'lock': 'x'}],
                                                         'total': 10 ** 9})
    assert len(endless) == MAX_PAGES


@pytest.mark.parametrize('bus,lines', [
    ({'verified': False, 'reason': 'ocs_locking.bus.info: not authorized'},
     ['bus not verified: ocs_locking.bus.info: not authorized']),
    ({'verified': False, 'reason': 'two\nlines'}, ['bus not verified: two lines']),
    ({'verified': False}, ['bus not verified: no reason given']),
    ({'verified': True, 'reason': None}, []), (None, []), ('garbage', [])])
def test_bus_lines_says_in_one_line_when_the_bus_is_not_verified(bus, lines):
    """When the registry's bus block says not verified, one line says why;
    verified or unknown (an older registry): nothing."""
    assert bus_lines(bus) == lines
