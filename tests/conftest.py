import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of benchmarks/ by file stem (scripts, not a package): ``load("speed_memory")``."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(stem: str):
        spec = importlib.util.spec_from_file_location(stem, root / f"{stem}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
