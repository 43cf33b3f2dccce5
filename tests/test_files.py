"""Files a run writes (edgebn.files): atomic writes, and directories staged and swapped in whole."""

import pytest

from edgebn.files import write_atomic


def test_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    class Boom(Exception):
        pass

    from edgebn.files import atomic_path

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise Boom
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new"


def test_atomic_writes_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "m.tflite", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
