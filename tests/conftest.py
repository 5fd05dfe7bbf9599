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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tensors this small only pay for more (and suffer badly
    on a busy machine). A module takes it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
