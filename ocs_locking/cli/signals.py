"""The signals that end an ``ocs-locks`` command: Ctrl-C, SIGTERM, SIGHUP.

They are installed explicitly: a shell starts background jobs with SIGINT
ignored, and then neither Python nor Twisted would install a handler (Twisted
only replaces Python's default one), so Ctrl-C or ``kill -INT`` would do
nothing. A closed terminal sends SIGHUP; a supervisor sends SIGTERM.
"""
import signal

__all__ = ['ENDING', 'on_ending', 'Interrupter']

#: Every signal that ends a command cleanly (exit 0).
ENDING = tuple(getattr(signal, name) for name in ('SIGINT', 'SIGTERM', 'SIGHUP')
               if hasattr(signal, name))


def on_ending(handler):
    """Call ``handler(signum, frame)`` (on the main thread) for each of :data:`ENDING`."""
    for signum in ENDING:
        signal.signal(signum, handler)


class Interrupter:
    """A handler that raises KeyboardInterrupt at the first ending signal and
    ignores the next ones, so that the clean-up it starts (a release) is not
    cut short by a second Ctrl-C or by the SIGTERM that follows a SIGHUP.
    ``signum`` is the first signal received (None before)."""

    def __init__(self):
        self.signum = None

    def install(self):
        on_ending(self)
        return self

    def __call__(self, signum, frame):
        if self.signum is not None:
            return
        self.signum = signum
        raise KeyboardInterrupt
