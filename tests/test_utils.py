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


def test_mixed_precision_unset_is_bf16_only_where_native_and_follows_the_launcher():
    from difftrain.utils import default_mixed_precision, native_bf16

    def native():
        return True

    def emulated():
        return False

    assert default_mixed_precision({}, native) == "bf16"
    assert default_mixed_precision({}, emulated) == "no"
    assert default_mixed_precision({"ACCELERATE_MIXED_PRECISION": "no"}, native) == "bf16"  # a bare `accelerate launch`
    assert default_mixed_precision({"ACCELERATE_MIXED_PRECISION": "fp16"}, native) == "fp16"
    assert default_mixed_precision({"ACCELERATE_MIXED_PRECISION": "bf16"}, emulated) == "bf16"
    if not __import__("torch").cuda.is_available():
        assert native_bf16("flags : fpu avx512f avx512_bf16 sse") and native_bf16("flags : amx_bf16 amx_tile")
        assert not native_bf16("flags : fpu avx512f avx512_vnni sse")


def test_an_unset_precision_is_resolved_and_recorded(tmp_path, train_unconditional, datasets_cache):
    import yaml

    from conftest import ROOT
    from difftrain.utils import default_mixed_precision

    tiny = (ROOT / "configs/tiny.yaml").read_text()
    (tmp_path / "unset.yaml").write_text("\n".join(l for l in tiny.splitlines() if not l.startswith("mixed_precision")))
    out = tmp_path / "run"
    assert train_unconditional("--config", tmp_path / "unset.yaml", "--output_dir", out, "--max_train_steps", 1,
                               "--validation_steps", 100, "--checkpointing_steps", 100) == 0
    recorded = yaml.safe_load((out / "training_config.yaml").read_text())
    assert recorded["mixed_precision"] == default_mixed_precision()
