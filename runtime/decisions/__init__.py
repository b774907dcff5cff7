"""Pure decisions: what a transport does with an Outcome (stream: ack, nak with delay,
term and dead letter; HTTP: status, headers, body). Small functions and tables, no I/O.

Internal: import these names from ``thaw.lowlevel``.
"""
