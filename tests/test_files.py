"""jaxcnn.files: a write is whole or not at all, with an ordinary file's permissions."""

import os

import pytest

from jaxcnn import files
from jaxcnn.errors import RunError


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "f.txt"
    files.atomic_write(target, "old")
    files.atomic_write(target, b"new \xff")
    assert target.read_bytes() == b"new \xff"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    files.atomic_write(target, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunError, match=r"cannot write .*f\.txt \(No space left on device\); "
                                       r"the previous version is intact"):
        files.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_temporary_file_lies_beside_the_target_under_its_prefix(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(a), real_replace(a, b)))
    files.atomic_write(tmp_path / "x.json", "{}")
    (tmp,) = seen
    assert os.path.dirname(tmp) == str(tmp_path)
    assert os.path.basename(tmp).startswith(files.TMP_PREFIX + "x.json.")
