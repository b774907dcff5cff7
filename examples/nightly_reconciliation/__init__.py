"""Nightly reconciliation: a schedule fans out over partitions, a join writes the report."""

from .app import app

__all__ = ["app"]
