"""Child processes: the ``process`` isolation (instances forked from the preloaded host)
and building a snapshot in a clean child Python.
"""
