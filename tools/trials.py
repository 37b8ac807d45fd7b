"""What the site benchmarks that run N trials share: their command line
(``--quick``, ``--json``, ``--keep``) and their ending (each target's PASS or
FAIL line, the run's length, the JSON results, the exit status)."""
import argparse
import json
import os
import sys
import time

__all__ = ['trial_parser', 'parse', 'finish']


def trial_parser(description, quick_trials=5, trials=20, keep='keep the site work dir (logs)'):
    """The parser of a trials benchmark; ``opts.trials`` is how many to run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--quick', action='store_true',
                   help=f'{quick_trials} trials instead of {trials}')
    p.add_argument('--json', metavar='PATH', help='write the results here')
    p.add_argument('--keep', action='store_true', help=keep)
    p.set_defaults(trial_counts=(quick_trials, trials))
    return p


def parse(parser, args=None):
    opts = parser.parse_args(args)
    quick_trials, trials = opts.trial_counts
    opts.trials = quick_trials if opts.quick else trials
    return opts


def finish(opts, started, targets, workdir=None, **results):
    """Print each target (``{'name', 'detail', 'passed'}``) and the run's
    line; write ``results`` with the targets to ``--json``; 0 when every
    target passed, else 1. ``started``: ``time.perf_counter()`` at the start."""
    for t in targets:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - started
    print(f"\n{'quick' if opts.quick else 'full'} run: {elapsed:.1f} s, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs"
          + (f'; site logs in {workdir}' if opts.keep and workdir else ''))
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump(dict(results, targets=targets, quick=opts.quick, elapsed_s=elapsed), fh,
                      indent=2)
    return 0 if all(t['passed'] for t in targets) else 1
