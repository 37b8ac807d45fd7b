"""Runnable OCS agents shipped with ocs-locking (installed as ``ocs_locking.agents``)."""
