"""Errors that mean "the user asked for something invalid".

The CLI prints them as one line and exits non-zero, without a traceback.
Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class KdbenchError(Exception):
    """A user mistake or an unmet precondition, reported as one clear line."""


class UnknownNameError(KdbenchError, KeyError):
    """A registry lookup for a name that nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(KdbenchError, ValueError):
    """A suite or cell specification failed validation."""


class DataError(KdbenchError):
    """A dataset path is missing or malformed."""


class NotApplicableError(KdbenchError):
    """A method cannot apply to a pair (said before training starts)."""


class DeviceUnavailableError(KdbenchError):
    """The requested device is not present on this machine."""
