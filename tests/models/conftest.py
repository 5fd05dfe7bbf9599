"""Model tests run without network: the Hugging Face Hub is offline and its cache is a folder
of the test (``hf_cache`` fills it in the Hub's cache layout)."""
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hf_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<tmp>/hf (also in huggingface_hub's constants, which
    it reads when imported)."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    try:
        import huggingface_hub.constants as constants
    except ImportError:
        return cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hf_cache(hf_offline):
    """``put(repo_id, {path_in_repo: bytes | Path}, repo_type="model")``: a snapshot of a Hub
    repository in the offline cache, laid out as huggingface_hub stores one."""

    def put(repo_id: str, files: dict[str, bytes | Path], repo_type: str = "model") -> Path:
        repo = hf_offline / f"{repo_type}s--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / COMMIT
        for name, content in files.items():
            target = snap / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                target.symlink_to(content)
            else:
                target.write_bytes(content)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        return snap

    return put
