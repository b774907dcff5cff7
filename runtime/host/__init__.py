"""The host: wires an App, a backbone and stream workers together and owns lifecycle;
stream workers, schedules, instance pools (thaw, scale to zero), revision routing by
weight, and loading an App from a path.

Internal: import these names from ``thaw.lowlevel``.
"""
