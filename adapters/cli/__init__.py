"""The ``thaw`` command line and the operations wing: serve, dev, run, snapshots,
provisioning, dead letters, worker supervision and the cold-start benchmark driver.

Lives in adapters because it parses argv, forks, execs and handles signals.
"""

from thaw.adapters.cli.command import main

__all__ = ["main"]
