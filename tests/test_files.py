"""Files a run writes (edgebn.files): atomic writes, and directories staged and swapped in whole."""

import pytest

from edgebn.errors import EdgebnError
from edgebn.files import check_not_source, write_atomic


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


def test_an_output_that_is_the_input_itself_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for out in ("m.keras", "./m.keras", str(tmp_path / "m.keras"), "sub/../m.keras"):
        with pytest.raises(EdgebnError, match="is the input model itself") as info:
            check_not_source(out, "m.keras")
        assert info.value.option == "out"
    check_not_source("f.keras", "m.keras")  # any other file is fine
