import pytest

from _trainutils import make_dataset


@pytest.fixture
def tiny_dataset(tmp_path):
    return make_dataset(tmp_path / "ds")
