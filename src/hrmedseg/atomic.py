"""Atomic file writes: nothing a user made is ever left half-written."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask: from /proc where there is one (reading it so is thread-safe), else by
    setting and restoring it (Python has no plain getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_like_open(fd: int, mode: int = 0o666) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode ``open()`` would give a new file: ``mode``
    less the umask, so masks, checkpoints and summaries are as readable as ``metrics.csv``."""
    os.fchmod(fd, mode & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``.

    Readers see the old file or the new one, never a partial one; on error the temporary file
    is removed and the old file is untouched.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        _chmod_like_open(fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """``obj`` as JSON (``indent``, ``default`` as :func:`json.dumps` takes them) with a final
    newline, written by :func:`atomic_write_bytes`. The text is made before the file is touched, so
    an object that does not serialise leaves the old file as it was."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=default) + "\n").encode())


def write_csv_atomic(path: str | os.PathLike, fields: Sequence[str],
                     rows: Iterable[Mapping[str, Any]]) -> Path:
    """A header of ``fields`` and one line per row (:class:`csv.DictWriter`: a missing key is an
    empty cell), written by :func:`atomic_write_bytes`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


def atomic_replace_dir(final: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Build a folder with ``write(tmp)`` under a temporary name beside ``final``, then swap it
    in: the previous version is kept as ``.NAME.old`` until the new one is in place, so a crash
    at any moment leaves the old folder or the new one (or ``.NAME.old``), never half of one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; a folder made by mkdir follows the umask
        write(tmp)
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
