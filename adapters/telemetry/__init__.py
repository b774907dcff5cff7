"""Telemetry adapters: metrics across worker processes, JSON logs (and tracing)."""
