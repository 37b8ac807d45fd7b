"""``python -m ocs_locking.cli``: the same as ``ocs-locks``."""
import sys

from . import main

sys.exit(main())
