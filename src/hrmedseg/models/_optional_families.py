"""Model families registered when their module imports (optional dependencies may be absent)."""
from __future__ import annotations

import importlib
import importlib.util

# Each entry is a module of this package; a family whose third-party dependency is missing is
# skipped here and explains itself when a user asks for it (see baselines).
FAMILIES: tuple[str, ...] = ("qtseg", "baselines", "sam", "esp_medsam")

_loaded = False


def load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in FAMILIES:
        # A family module not written yet is skipped; one that exists must import cleanly.
        if importlib.util.find_spec(f"hrmedseg.models.{mod}") is not None:
            importlib.import_module(f"hrmedseg.models.{mod}")
