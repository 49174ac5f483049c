"""kit/fs.py: staged output directories and their ownership mark."""

from __future__ import annotations


def test_staged_dir_leaves_nothing_behind_and_never_replaces_a_users_directory(tmp_path, monkeypatch):
    """kit.fs.staged_dir: a failed block leaves no output and no temporary; a success is marked; force
    replaces only a marked directory; without a process group a RANK>0 process still stages alone."""
    import pytest

    from kit.fs import KIT_OUTPUT_MARK, OutputError, staged_dir

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "3")  # as under a launcher, but no process group is up
    with staged_dir(out) as tmp:
        (tmp / "done").write_text("y")
    assert (out / "done").read_text() == "y" and (out / KIT_OUTPUT_MARK).is_file()
    with pytest.raises(OutputError, match="already exists"):
        with staged_dir(out):
            pass
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes").write_text("keep")
    with pytest.raises(OutputError, match=KIT_OUTPUT_MARK):
        with staged_dir(mine, force=True):
            pass
    assert (mine / "notes").read_text() == "keep"
