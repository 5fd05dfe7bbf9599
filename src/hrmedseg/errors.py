"""The package's error base class, and turning exceptions into one-line messages.

Every error a user can fix (a bad file, size, name, option or config) is a :class:`HrmedsegError`;
each also keeps the builtin base it had before (``ValueError``, ``KeyError``, ...) so that existing
``except`` clauses still catch it. The command line catches :class:`HrmedsegError` and prints its
message as one line.
"""
from __future__ import annotations

__all__ = ["HrmedsegError", "UserError", "first_line"]


class HrmedsegError(Exception):
    """An error whose message is the whole story: one line, naming the file or the value at fault."""


class UserError(HrmedsegError):
    """A command-line argument, or a combination of them, that cannot be used."""


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (just the type name when there is none)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
