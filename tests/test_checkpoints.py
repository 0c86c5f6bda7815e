import json

import pytest

from difftrain import checkpoints
from difftrain.errors import UserError


def make(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / checkpoints.STATE_FILE).write_text(json.dumps({"global_step": step}))
    return path


def test_latest_ignores_half_written_checkpoints(tmp_path):
    make(tmp_path, 5)
    make(tmp_path, 100)
    make(tmp_path, 20, complete=False)  # killed before trainer_state.json: not a checkpoint
    (tmp_path / ".checkpoint-30.partial").mkdir()
    (tmp_path / "checkpoint-abc").mkdir()
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-100"]
    assert checkpoints.find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-100"


def test_resume_targets(tmp_path):
    assert checkpoints.find_resume_checkpoint(tmp_path, None) is None
    assert checkpoints.find_resume_checkpoint(tmp_path, "latest") is None  # nothing yet: start fresh
    five = make(tmp_path, 5)
    assert checkpoints.find_resume_checkpoint(tmp_path, "checkpoint-5") == five
    assert checkpoints.find_resume_checkpoint(tmp_path / "elsewhere", str(five)) == five
    with pytest.raises(UserError, match="checkpoint-7: no complete checkpoint there .*checkpoint-5"):
        checkpoints.find_resume_checkpoint(tmp_path, "checkpoint-7")
    make(tmp_path, 9, complete=False)
    with pytest.raises(UserError, match="checkpoint-9"):
        checkpoints.find_resume_checkpoint(tmp_path, "checkpoint-9")


def test_rotate_keeps_the_newest(tmp_path):
    for step in (10, 2, 30, 4):
        make(tmp_path, step)
    assert [p.name for p in checkpoints.rotate(tmp_path, 2)] == ["checkpoint-2", "checkpoint-4"]
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-30"]
    assert checkpoints.rotate(tmp_path, None) == [] and checkpoints.rotate(tmp_path, 5) == []
