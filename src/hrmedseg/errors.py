"""Turning exceptions into the one-line messages the CLI, tables and logs show."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (just the type name when there is none)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
