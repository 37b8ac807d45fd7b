"""A throw-away InfluxDB 1.x server on a loopback port (developer tool).

Debian's ``influxd`` (package ``influxdb``; ``make influxdb`` installs it)
is started with a config of its own in a work directory: HTTP on
127.0.0.1:<free port>, its RPC port free too, no reporting, no internal
monitor database, every other listener off. :meth:`InfluxServer.query` asks
it over HTTP, as Grafana's InfluxDB data source does. Used by the tests and
available to people::

    python -m tools.influx run WORKDIR      # prints the address; Ctrl-C stops it
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from tools.devsite import free_port

__all__ = ['InfluxServer', 'find_influxd', 'InfluxError']

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{dir}/meta"

[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false

[coordinator]

[retention]
  enabled = true

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""


class InfluxError(RuntimeError):
    """The server could not start, or a query failed (one line)."""


def find_influxd(explicit=None):
    """The ``influxd`` to run: ``explicit``, ``$OCS_LOCKING_INFLUXD``, or
    the one on PATH; InfluxError (saying how to get one) if none."""
    for candidate in (explicit, os.environ.get('OCS_LOCKING_INFLUXD'), shutil.which('influxd'),
                      '/usr/bin/influxd'):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise InfluxError('no influxd: install Debian\'s influxdb package (make influxdb)')


class InfluxServer:
    """One ``influxd`` in ``workdir`` (created), on free loopback ports.

    Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, workdir, influxd=None):
        self.workdir = os.path.abspath(workdir)
        self.influxd = find_influxd(influxd)
        self.port = free_port()
        self.rpc_port = free_port()
        self.proc = None
        self.log_path = os.path.join(self.workdir, 'influxd.log')

    @property
    def url(self):
        return f'http://127.0.0.1:{self.port}'

    def start(self, timeout=60):
        """Start the server; return once ``/ping`` answers (bounded)."""
        os.makedirs(self.workdir, exist_ok=True)
        config = os.path.join(self.workdir, 'influxdb.conf')
        with open(config, 'w') as f:
            f.write(_CONFIG.format(dir=self.workdir, http_port=self.port,
                                   rpc_port=self.rpc_port))
        log = open(self.log_path, 'ab')
        try:
            self.proc = subprocess.Popen([self.influxd, '-config', config], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise InfluxError(f'influxd exited ({self.proc.returncode}); see {self.log_path}')
            try:
                with urllib.request.urlopen(self.url + '/ping', timeout=2) as r:
                    if r.status == 204:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise InfluxError(f'influxd did not answer on {self.url} within {timeout} s; '
                                  f'see {self.log_path}')
            time.sleep(0.1)

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def query(self, q, db=None):
        """Run InfluxQL ``q`` (in database ``db``): the ``results`` list of
        the answer. InfluxError with the server's error in one line."""
        params = {'q': q, 'epoch': 's'}
        if db is not None:
            params['db'] = db
        url = self.url + '/query?' + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise InfluxError(f'{q!r:.80}: HTTP {e.code}: {e.read()[:200]!r}') from None
        for result in answer.get('results', []):
            if 'error' in result:
                raise InfluxError(f'{q!r:.80}: {result["error"]}')
        return answer.get('results', [])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(args=None):
    p = argparse.ArgumentParser(description='run a throw-away InfluxDB 1.x on loopback')
    sub = p.add_subparsers(dest='command', required=True)
    r = sub.add_parser('run', help='start it in WORKDIR and wait for Ctrl-C')
    r.add_argument('workdir')
    opts = p.parse_args(args)
    try:
        with InfluxServer(opts.workdir) as server:
            print(f'InfluxDB 1.x at {server.url} (data in {opts.workdir}); Ctrl-C stops it',
                  flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    except InfluxError as e:
        print(f'influx: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
