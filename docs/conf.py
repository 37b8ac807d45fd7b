# Sphinx configuration for ocs-locking.
#
# Build (warnings are errors):
#   .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
# The ``>>>`` examples in the pages are doctests; run them with:
#   .venv/bin/python -m pytest -q -p no:cacheprovider --doctest-glob='*.rst' docs
# `make test-fast` runs both (and the unit tests) in under a minute.
import os
import sys

# The repository root, so autodoc imports this checkout's ocs_locking.
sys.path.insert(0, os.path.abspath('..'))

from ocs_locking import __version__  # noqa: E402

project = 'ocs-locking'
author = 'ocs-locking contributors'
copyright = 'ocs-locking contributors'
version = release = __version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.doctest',
]

master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# Unresolvable cross-references (ocs, Twisted, the standard library) are not
# errors: there is no intersphinx (the build must work offline).
nitpicky = False

# Like the ocs docs: members in source order, class docstring only.
autodoc_default_options = {
    'member-order': 'bysource',
}
autoclass_content = 'class'
# Signatures of OCS operations come from the first docstring line,
# e.g. ``acq(rate=10., test_mode=False)``, as in ocs's own agent pages.
autodoc_docstring_signature = True
autodoc_typehints = 'description'

napoleon_google_docstring = True
napoleon_numpy_docstring = False

pygments_style = 'sphinx'
html_theme = 'alabaster'
html_title = f'ocs-locking {release}'
