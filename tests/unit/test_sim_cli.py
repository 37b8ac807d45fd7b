"""The simulated device's command line (python -m ...server), as a process."""
import selectors
import signal
import subprocess
import sys

import pytest

from ocs_locking.agents.simulated_device.server import main

from ..support import WAIT
from .sim_support import clients, server  # noqa: F401 (fixtures)


def _start_cli(*extra):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'ocs_locking.agents.simulated_device.server', '--port', '0',
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(WAIT):
            proc.kill()
            proc.communicate(timeout=WAIT)
            pytest.fail('the server printed nothing in time')
    return proc, proc.stdout.readline()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_server_cli_prints_address_and_exits_0_on_signal(signum, clients):
    """When run from the command line, the server prints where it listens, serves
    there, and on SIGINT or SIGTERM exits 0 without a traceback."""
    proc, line = _start_cli('--channels', '3')
    try:
        assert line.startswith('simulated device listening on 127.0.0.1:')
        port = int(line.rsplit(':', 1)[1])
        assert len(clients(port).read()['channels']) == 3
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert 'Traceback' not in err and out == ''


@pytest.mark.parametrize('argv, complaint', [
    (['--channels', '0'], 'argument --channels: channels must be in 1..64'),
    (['--latency', 'fast'], "argument --latency: latency must be a float, not 'fast'"),
    (['--port', '-5'], 'argument --port: port must be in 0..65535'),
    (['--slow', 'inf'], 'argument --slow: slow must be in 0..600'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
])
def test_server_cli_bad_arguments_give_one_line_error(argv, complaint, capsys):
    """When an argument is bad, argparse reports it on one line and exits 2."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if 'error:' in ln]
    assert len(errors) == 1 and complaint in errors[0]


