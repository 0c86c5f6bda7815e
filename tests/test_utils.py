"""difftrain/utils.py: writes that are complete or absent, an error's first line, cache roots."""

from pathlib import Path

import pytest

from difftrain.utils import cache_root, first_line, write_text_atomic, written_beside


def test_a_failed_write_leaves_the_previous_file_and_folder_as_they_were(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with written_beside(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"

    folder = tmp_path / "cache"
    with written_beside(folder) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with written_beside(folder) as tmp:
            tmp.mkdir()
            raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["a"]


def test_a_finished_write_replaces_file_and_folder_and_clears_a_stale_partial(tmp_path):
    path = tmp_path / "metrics.json"
    (tmp_path / "metrics.json.partial").write_text("left by a killed run")
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]

    folder = tmp_path / "cache"
    for content in ("1", "2"):
        with written_beside(folder) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert [p.name for p in folder.iterdir()] == ["2"]


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\n  at line 3")) == "bad value"
    assert first_line(KeyError()) == "KeyError"


def test_caches_live_under_cache_dir_or_beside_the_datasets_cache(tmp_path, datasets_cache):
    assert cache_root(str(tmp_path), "difftrain-x") == tmp_path / "difftrain-x"
    assert cache_root(None, "difftrain-x") == Path(datasets_cache) / "difftrain-x"
