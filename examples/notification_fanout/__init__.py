"""Notification fan-out: a domain event -> rules -> one capability per channel."""

from .app import app

__all__ = ["app"]
