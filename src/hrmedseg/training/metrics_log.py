"""Per-epoch metrics as CSV rows, appended so a crash loses at most the current epoch."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def append_csv_row(path: Path, row: dict[str, Any], fields: Sequence[str]) -> None:
    new = not Path(path).exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields))
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})
