import os

import pytest

from speechgpt.fileio import atomic_output, atomic_write_bytes, atomic_write_text


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "a" / "b.txt", "hello\n")
    assert target.read_text() == "hello\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_bytes(tmp_path / "data.bin", b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
