"""Snapshots: the file format (compiled modules, data, manifest, content hash), collecting
an imported App into a payload, and loading a snapshot into a live Revision.

Building in a clean child process is the operations side: ``thaw.adapters.process.build``.
Internal: import these names from ``thaw.lowlevel``.
"""
