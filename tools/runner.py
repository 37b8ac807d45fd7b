"""``python -m tools.devsite run`` (what ``make run`` runs): a :class:`~tools.devsite.Site`
kept up until a signal, with a banner, an optional ``ocs-locks watch`` under
it, and a report of every process that exits.

* SIGINT, SIGTERM and SIGHUP (a closed terminal) stop everything the site
  started; a second signal during that does not interrupt it
  (:class:`tools.supervisor.Shutdown`).
* An agent or simulated device that exits is reported in one line (kept in
  the watch's header) and the rest keeps running; if the router exits, the
  site is stopped and the exit status is 1.
* The watch gets the banner as its header (its existing ``--header``
  option), so the "talk to it" commands stay on screen.
"""
import signal
import sys
import time

from tools.devsite import Site, SiteError
from tools.processes import exit_text, spawn, stop as _stop_proc
from tools.supervisor import ExitWatcher, Shutdown, Stop

__all__ = ['run', 'banner', 'Screen', 'Watch']


def banner(site):
    """What runs, where, and how to talk to it."""
    lines = [f'ocs-locking demo site is up (logs in {site.workdir}/logs):',
             f'  crossbar router   ws://127.0.0.1:{site.port}/ws   '
             f'(HTTP calls: http://127.0.0.1:{site.port}/call, realm {site.realm})']
    page = getattr(site, 'page_url', None)
    if page:
        lines.append(f'  live page         {page}   (locks, leases, why, history, reserve)')
    for dev in site.devices:
        lines.append(f"  {dev['name']:<17} simulated device on 127.0.0.1:{dev['port']} "
                     f"({dev['channels']} channels)")
    for inst in site.instances:
        lines.append(f"  {inst['instance-id']:<17} {inst['agent-class']} "
                     f"(pid {site.agents[inst['instance-id']].pid})")
    devices = [i['instance-id'] for i in site.instances
               if i['agent-class'] == 'SimulatedDeviceAgent']
    lines += ['', 'Talk to it from another terminal:']
    if devices:
        lines.append('  .venv/bin/python -c "from ocs.ocs_client import OCSClient; '
                     f"c = OCSClient('{devices[0]}', args={site.client_args!r}); "
                     'print(c.set_heater(value=42))"')
    lines += [f"  .venv/bin/ocs-locks {' '.join(site.client_args)} status",
              '', 'Ctrl-C stops everything this command started.']
    return '\n'.join(lines)


class Screen:
    """Lines for the terminal that survive a closed terminal (SIGHUP): once a
    write fails, later ones are dropped instead of raising mid-shutdown."""

    def __init__(self):
        self.gone = False

    def say(self, text, err=False):
        if self.gone:
            return
        stream = sys.stderr if err else sys.stdout
        try:
            stream.write(text + '\n')
            stream.flush()
        except (OSError, ValueError):
            self.gone = True


class Watch:
    """``ocs-locks watch`` under a header that repeats the banner and every
    notice since (restarted with the new header when a notice is added)."""

    MAX_RESTARTS = 3

    def __init__(self, site, banner):
        self.site = site
        self.banner = banner
        self.notes = []
        self.proc = None
        self.restarts = 0

    def header(self):
        return '\n'.join([self.banner, *self.notes])

    def start(self):
        self.proc = spawn([sys.executable, '-m', 'ocs_locking.cli', *self.site.client_args,
                           'watch', '--header', self.header()], None)
        return self.proc

    def stop(self):
        if self.proc is not None:
            _stop_proc(self.proc, signal.SIGTERM, 5)
            self.proc = None

    def note(self, line):
        self.notes.append(line)
        self.stop()
        return self.start()


def run(opts, screen=None, restore_signals=True):
    """``python -m tools.devsite run``: the site until a signal; the exit status.

    ``restore_signals=False`` (the command line) keeps stop signals harmless
    until the process exits."""
    screen = screen or Screen()
    shutdown = Shutdown(on_repeat=lambda signum: screen.say(
        f'devsite: {signal.Signals(signum).name} while stopping: still stopping', err=True))
    shutdown.install()
    site = watch = None
    try:
        try:
            site = Site(opts.site_file, opts.host, opts.workdir, port=opts.port,
                        crossbar=opts.crossbar)
            site.start()
        except SiteError as e:
            shutdown.begin()
            screen.say(f'devsite: {e}', err=True)
            return 2
        text = banner(site)
        screen.say(text)
        exits = ExitWatcher()
        exits.add(('router', 'crossbar'), site.router)
        for name, proc in site.device_procs.items():
            exits.add(('device', name), proc)
        for instance_id, proc in site.agents.items():
            exits.add(('agent', instance_id), proc)
        if opts.watch:
            watch = Watch(site, text)
            exits.add(('watch', 'watch'), watch.start())
        while True:
            for kind, name in exits.wait():
                if kind == 'router':
                    shutdown.begin()
                    screen.say(f'devsite: the crossbar router (pid {site.router.pid}) '
                               f'{exit_text(site.router.returncode)}; stopping the site '
                               f'(see {site.log_path("crossbar")})', err=True)
                    return 1
                if kind == 'watch':
                    if site.router.poll() is None and watch.restarts < watch.MAX_RESTARTS:
                        watch.restarts += 1
                        exits.add(('watch', 'watch'), watch.start())
                    continue
                proc = site.agents[name] if kind == 'agent' else site.device_procs[name]
                what = (f"agent {name} ({site.instance(name)['agent-class']})"
                        if kind == 'agent' else f'simulated device {name}')
                line = (f'devsite: {time.strftime("%H:%M:%S")} {what}, pid {proc.pid}, '
                        f'{exit_text(proc.returncode)}; the rest of the site keeps running '
                        f'(see {site.log_path(name if kind == "agent" else "device-" + name)})')
                screen.say(line, err=True)
                if watch is not None:
                    exits.add(('watch', 'watch'), watch.note(line))
    except Stop as e:
        screen.say(f'\n{e.name}: stopping everything this command started...')
        return 0
    finally:
        shutdown.begin()
        if watch is not None:
            watch.stop()
        if site is not None:
            site.stop()
            if shutdown.signum is not None:
                screen.say('stopped.')
        if restore_signals:
            shutdown.restore()


