"""The command line of the simulated device:
``python -m ocs_locking.agents.simulated_device.server`` (or ``... .cli``).

Serves a :class:`~.server.DeviceServer` on 127.0.0.1 until SIGINT or SIGTERM;
bad arguments give a one-line error and exit status 2, a port in use exit
status 1.
"""
import argparse
import math
import signal
import sys
import threading

from ocs_locking.agents.simulated_device.server import MAX_SLOW, DeviceServer

__all__ = ['make_parser', 'main']


def _ranged(kind, low, high, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{what} must be a {kind.__name__}, '
                                             f'not {text!r}') from None
        if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f'{what} must be in {low:g}..{high:g}, '
                                             f'not {text}')
        return value
    return parse


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser(
            prog='python -m ocs_locking.agents.simulated_device.server',
            description='A simulated thermometry controller on 127.0.0.1 (line protocol '
                        'over TCP). Runs until SIGINT or SIGTERM.')
    parser.add_argument('--port', type=_ranged(int, 0, 65535, 'port'), default=18101,
                        help='TCP port on 127.0.0.1; 0 picks a free one (default 18101).')
    parser.add_argument('--channels', type=_ranged(int, 1, 64, 'channels'), default=4,
                        help='Number of thermometer channels, 1..64 (default 4).')
    parser.add_argument('--latency', type=_ranged(float, 0, 10, 'latency'), default=0.002,
                        help='Seconds each device command takes, 0..10 (default 0.002).')
    parser.add_argument('--serial', default='0', help='Serial number for *IDN? (default 0).')
    parser.add_argument('--slow', type=_ranged(float, 0, MAX_SLOW, 'slow'), default=0.0,
                        metavar='S', help='Start with FAULT SLOW S: delay every reply by S s.')
    parser.add_argument('--drop-next', action='store_true',
                        help='Start with FAULT DROPNEXT armed.')
    return parser


def main(args=None):
    parser = make_parser()
    opts = parser.parse_args(args)
    try:
        server = DeviceServer(port=opts.port, channels=opts.channels, latency=opts.latency,
                              serial=opts.serial, slow=opts.slow, drop_next=opts.drop_next)
    except ValueError as e:
        parser.error(str(e))
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Installed explicitly: a background job started by a shell has SIGINT
        # ignored, and Python would then never raise KeyboardInterrupt.
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            server.start()
        except OSError as e:
            print(f'simulated device: cannot listen on 127.0.0.1:{opts.port}: '
                  f'{e.strerror or e}', file=sys.stderr)
            return 1
        print(f'simulated device listening on 127.0.0.1:{server.port}', flush=True)
        stop.wait()
        return 0
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == '__main__':
    sys.exit(main())
