"""Where a result came from: the source commit recorded in run folders and benchmark files."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def source_commit() -> str | None:
    """The short commit of the sources: env ``HRMEDSEG_COMMIT`` if set (benchmark scripts set it
    when they copy the sources to a machine without the repository), else git where the package
    is a checkout, else None."""
    if os.environ.get("HRMEDSEG_COMMIT"):
        return os.environ["HRMEDSEG_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
