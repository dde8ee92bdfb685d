import pytest

from lab.atomic import atomic_path, atomic_write_text


def test_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "one"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # no temp file left


def test_temp_file_is_beside_target(tmp_path):
    with atomic_path(tmp_path / "x.bin") as tmp:
        assert tmp.parent == tmp_path  # same filesystem, so the rename is atomic
        tmp.write_bytes(b"1")
    assert (tmp_path / "x.bin").read_bytes() == b"1"


def test_written_file_gets_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        import importlib

        import lab.atomic

        importlib.reload(lab.atomic)  # the module reads the umask once, at import
        lab.atomic.atomic_write_text(tmp_path / "product.json", "{}")
    finally:
        os.umask(mask)
        importlib.reload(lab.atomic)
    assert (tmp_path / "product.json").stat().st_mode & 0o777 == 0o644
