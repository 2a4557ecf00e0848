"""What every contract check raises when a plugin breaks the contract."""
from __future__ import annotations

from typing import NoReturn


class ContractError(AssertionError):
    """A plugin does not keep kdbench's plugin contract; the message says how."""


def fail(message: str) -> NoReturn:
    """Raise :class:`ContractError` with ``message``."""
    raise ContractError(message)


__all__ = ["ContractError", "fail"]
