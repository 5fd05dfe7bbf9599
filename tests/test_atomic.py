"""Atomically written files and folders get the mode a plain ``open()``/``mkdir`` would give."""
from __future__ import annotations

import os
import stat

import pytest

from hrmedseg.atomic import atomic_replace_dir, atomic_write_bytes, write_json_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_file_follows_umask(tmp_path, umask, mask):
    umask(mask)
    ref = tmp_path / "plain.bin"
    with open(ref, "wb") as fh:      # what a non-atomic write produces
        fh.write(b"x")
    out = atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(ref.stat().st_mode) == 0o666 & ~mask
    # replacing an existing file keeps following the umask
    out = atomic_write_bytes(out, b"again")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_dir_follows_umask(tmp_path, umask, mask):
    umask(mask)
    (tmp_path / "plain").mkdir()
    final = atomic_replace_dir(tmp_path / "run", lambda d: (d / "f.txt").write_text("x"))
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_png_mask_written_0644_under_umask_022(tmp_path, umask):
    import numpy as np

    from hrmedseg.data.io import write_mask_png

    umask(0o022)
    p = write_mask_png(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_json_round_trips(tmp_path):
    import json
    from pathlib import Path

    obj = {"name": "ü", "values": [1, 2.5, None, True], "nested": {"a": []}}
    out = write_json_atomic(tmp_path / "sub" / "r.json", obj, indent=1)
    text = out.read_text()
    assert json.loads(text) == obj and text.endswith("}\n") and text == json.dumps(obj, indent=1) + "\n"
    write_json_atomic(out, {"p": Path("/x")}, default=str)
    assert json.loads(out.read_text()) == {"p": "/x"}


def test_json_failure_keeps_the_old_file(tmp_path, monkeypatch):
    out = write_json_atomic(tmp_path / "r.json", {"v": 1})
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(out, {"v": object()})       # does not serialise
    assert out.read_bytes() == before

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)       # the write itself fails
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(out, {"v": 2})
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]   # no temporary file left


def test_write_csv_atomic_round_trips_and_leaves_no_temporary(tmp_path):
    import csv

    from hrmedseg.atomic import write_csv_atomic
    path = tmp_path / "t.csv"
    write_csv_atomic(path, ["a", "b"], [{"a": 1, "b": "x"}, {"a": 2}])
    with open(path, newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"a": "1", "b": "x"}, {"a": "2", "b": ""}]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
