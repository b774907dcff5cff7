"""What function authors declare: App, capabilities, triggers, policies, cron, change inputs.

Internal: import these names from ``thaw`` (function authors) or ``thaw.lowlevel``.
"""
