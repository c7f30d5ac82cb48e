"""User-facing error types shared across zoolens."""

from __future__ import annotations


class ZoolensError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class ConfigError(ZoolensError):
    """An invalid configuration value (sizes, fractions, seeds, paths)."""


class BehaviorError(ZoolensError):
    """An unknown behavior, or one that cannot exist at the requested vocab/length."""
