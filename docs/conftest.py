# The pages' ``>>>`` examples run under pytest (--doctest-glob='*.rst');
# the built HTML is not a source of tests.
collect_ignore = ['_build', 'conf.py']
