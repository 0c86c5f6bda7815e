"""--hub_push_checkpoints and --resume_from_checkpoint hub:…, with test_hub's recording stand-in for HfApi given a
repo behind it (branches of files in memory) and HfApi's one-at-a-time background queue; no network here."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.utils import filter_repo_objects

from conftest import snapshot
from difftrain import config, hub
from difftrain.errors import UserError
from difftrain.unconditional_config import UnconditionalConfig
from test_hub import RecordingApi
from test_resume_and_stops import TINY, weights

HUB = ["--push_to_hub", "--hub_model_id", "me/tiny", "--hub_token", "hf_SECRET", "--hub_push_checkpoints"]


class HubRepo(RecordingApi):
    """RecordingApi with one repo behind it: branch → {path in repo: bytes}."""

    branches = {}
    upload_threads = []  # (branch, thread) of each upload

    def __init__(self, token=None):
        super().__init__(token)
        self.queue = ThreadPoolExecutor(max_workers=1)  # as HfApi.run_as_future: background jobs, in order

    def run_as_future(self, fn, *args, **kwargs):
        return self.queue.submit(fn, *args, **kwargs)

    def create_branch(self, repo_id, *, branch, token=None, exist_ok=False):
        RecordingApi.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch}))
        HubRepo.branches.setdefault(branch, dict(HubRepo.branches.get("main", {})))  # from main, as the Hub does

    def upload_folder(self, **kwargs):
        result = super().upload_folder(**kwargs)
        HubRepo.upload_threads.append((kwargs.get("revision"), threading.current_thread()))
        root, prefix = kwargs["folder_path"], kwargs.get("path_in_repo")
        files = {f"{prefix}/{k}" if prefix else k: v for k, v in snapshot(Path(root)).items()}
        kept = filter_repo_objects(files, ignore_patterns=kwargs.get("ignore_patterns"))
        HubRepo.branches.setdefault(kwargs.get("revision") or "main", {}).update({k: files[k] for k in kept})
        return result if kwargs.get("run_as_future") else "commit"

    def list_repo_files(self, repo_id, *, revision=None, token=None):
        RecordingApi.calls.append(("list_repo_files", {"repo_id": repo_id, "revision": revision}))
        if revision not in HubRepo.branches:
            raise RevisionNotFoundError("Revision Not Found", response=httpx2.Response(
                404, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")))
        return sorted(HubRepo.branches[revision])

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, token=None):
        RecordingApi.calls.append(("create_commit", {"operations": operations, "revision": revision}))
        files = HubRepo.branches[revision]
        for op in operations:
            for path in [p for p in files if p.startswith(op.path_in_repo)]:
                del files[path]


@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """HubRepo as hub.HfApi; hub.snapshot_download copies from it into downloads/, recording what it was asked."""
    RecordingApi.calls, HubRepo.branches, HubRepo.upload_threads = [], {}, []
    monkeypatch.setattr(hub, "HfApi", HubRepo)
    downloads = []

    def snapshot_download(repo_id, *, revision, allow_patterns, token):
        downloads.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        folder = tmp_path / "downloads" / str(len(downloads))
        files = HubRepo.branches[revision]
        for path in filter_repo_objects(files, allow_patterns=allow_patterns):
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(files[path])
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return downloads


def test_checkpoints_go_up_in_the_background_rotate_and_resume_exactly_elsewhere(tmp_path, train_unconditional,
                                                                                 hub_repo, capsys):
    flags = [*TINY, "--max_train_steps", 6, "--checkpointing_steps", 2, "--checkpoints_total_limit", 2, "--use_ema",
             "--save_model_epochs", 100]
    first, second = tmp_path / "first-machine", tmp_path / "second-machine"
    assert train_unconditional(*flags, "--output_dir", first, *HUB) == 0
    uploads = [kw for name, kw in RecordingApi.calls if name == "upload_folder" and kw.get("revision") == "checkpoints"]
    assert [kw["path_in_repo"] for kw in uploads] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # each from a copy of the checkpoint alone, off the training thread
    staged = [Path(kw["folder_path"]) for kw in uploads]
    assert [p.name for p in staged] == [kw["path_in_repo"] for kw in uploads]
    assert all(p.parent.parent == first and p.parent.name.startswith(hub.STAGING_PREFIX) for p in staged)
    in_main_thread = [t is threading.main_thread() for branch, t in HubRepo.upload_threads if branch == "checkpoints"]
    assert in_main_thread == [False] * 3
    # beyond what it copied from main when it was made, the branch holds exactly the two newest checkpoints, byte for
    # byte; checkpoint-2 went in one delete commit
    main, branch = HubRepo.branches["main"], HubRepo.branches["checkpoints"]
    pushed = {path: data for path, data in branch.items() if path not in main}
    assert pushed == {f"{n}/{path}": data for n in ("checkpoint-4", "checkpoint-6")
                      for path, data in snapshot(first / n).items()}
    deletes = [kw for name, kw in RecordingApi.calls if name == "create_commit"]
    assert [[op.path_in_repo for op in kw["operations"]] for kw in deletes] == [["checkpoint-2/"]]
    assert "model_index.json" in main and not any(path.startswith("checkpoint") for path in main)  # pipeline alone
    assert all(b"hf_SECRET" not in data for branch in HubRepo.branches.values() for data in branch.values())
    assert not list(first.glob(hub.STAGING_PREFIX + "*"))  # the copies are gone once uploaded

    capsys.readouterr()
    assert train_unconditional(*flags, "--output_dir", second,
                               "--resume_from_checkpoint", "hub:me/tiny@checkpoint-4") == 0
    assert hub_repo == [{"repo_id": "me/tiny", "revision": "checkpoints", "allow_patterns": ["checkpoint-4/*"]}]
    assert "Resuming from " + str(tmp_path / "downloads" / "1" / "checkpoint-4") in capsys.readouterr().out
    for sub in ("unet", "unet_ema"):  # steps 5 and 6 on the second machine = the uninterrupted run's
        a, b = weights(first / "checkpoint-6" / sub), weights(second / "checkpoint-6" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def resume_config(output_dir, resume, *extra):
    return config.parse(UnconditionalConfig,
                        ["--output_dir", str(output_dir), "--resume_from_checkpoint", resume, *extra])


def test_latest_takes_the_hubs_newest_only_when_the_output_folder_has_none(tmp_path, hub_repo):
    HubRepo.branches = {"checkpoints": {"checkpoint-2/trainer_state.json": b"{}",
                                        "checkpoint-10/trainer_state.json": b"{}",
                                        "checkpoint-12/unet/config.json": b"{}"}}  # 12: no trainer_state.json
    out = tmp_path / "run"
    found = hub.find_resume_checkpoint(resume_config(out, "latest", *HUB))
    assert found.name == "checkpoint-10" and (found / "trainer_state.json").is_file()  # by step, not by name
    local = out / "checkpoint-1"
    local.mkdir(parents=True)
    (local / "trainer_state.json").write_text("{}")
    asked = len(RecordingApi.calls)
    assert hub.find_resume_checkpoint(resume_config(out, "latest", *HUB)) == local
    assert len(RecordingApi.calls) == asked and len(hub_repo) == 1  # the local one is taken without asking the Hub
    with pytest.raises(UserError, match="me/tiny has no checkpoint-7 .*it has checkpoint-2, checkpoint-10: name one"):
        hub.find_resume_checkpoint(resume_config(out, "hub:me/tiny@checkpoint-7"))
    HubRepo.branches = {}  # a first start: no branch yet, so 'latest' starts over
    assert hub.find_resume_checkpoint(resume_config(tmp_path / "fresh", "latest", *HUB)) is None
    with pytest.raises(UserError, match="me/tiny has no checkpoint on its 'checkpoints' branch"):
        hub.find_resume_checkpoint(resume_config(tmp_path / "fresh", "hub:me/tiny"))


@pytest.mark.parametrize("flags, message", [
    (["--hub_push_checkpoints"], "--hub_push_checkpoints uploads to the --push_to_hub repo"),
    (["--hub_push_checkpoints", "--push_to_hub", "--hub_model_id", "tiny"], "--hub_model_id USER/REPO"),
    (["--resume_from_checkpoint", "hub:me/tiny@4"], "write hub:USER/REPO .* or hub:USER/REPO@checkpoint-N"),
])
def test_nonsense_hub_checkpoint_options_are_refused(flags, message):
    with pytest.raises(UserError, match=message) as refused:
        config.parse(UnconditionalConfig, flags)
    assert "\n" not in str(refused.value)


def fake_checkpoint(folder, step):
    path = folder / f"checkpoint-{step}"
    (path / "unet").mkdir(parents=True)
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights %d" % step)
    (path / "trainer_state.json").write_text('{"global_step": %d}' % step)
    return path


def test_a_queued_upload_survives_local_rotation_and_a_failed_one_deletes_nothing(tmp_path, hub_repo, capsys):
    cfg = config.parse(config.TrainConfig, ["--output_dir", str(tmp_path), "--checkpoints_total_limit", "1", *HUB])
    uploads = hub.CheckpointUploads(cfg, tmp_path)
    earlier_upload = threading.Event()
    uploads.api.run_as_future(earlier_upload.wait, 60)  # the queue is busy: the next upload waits its turn
    queued = uploads.push(fake_checkpoint(tmp_path, 3))
    shutil.rmtree(tmp_path / "checkpoint-3")  # local rotation, before the upload starts
    earlier_upload.set()
    queued.result()
    uploaded = {"checkpoint-3/unet/diffusion_pytorch_model.safetensors": b"weights 3",
                "checkpoint-3/trainer_state.json": b'{"global_step": 3}'}
    assert HubRepo.branches["checkpoints"] == uploaded

    def upload_fails(**kwargs):
        raise ConnectionError("network down\nmore")

    uploads.api.upload_folder = upload_fails
    capsys.readouterr()
    assert uploads.push(fake_checkpoint(tmp_path, 5)).result() is None  # training is not stopped by it
    assert capsys.readouterr().err == (
        "warning: --hub_push_checkpoints: checkpoint-5 not uploaded (ConnectionError: network down); training goes on "
        "and the next checkpoint is uploaded as usual.\n")
    assert HubRepo.branches["checkpoints"] == uploaded  # nothing rotated away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]  # no staged copy left


def test_without_a_limit_every_checkpoint_stays_on_the_hub(tmp_path, hub_repo, capsys):
    cfg = config.parse(config.TrainConfig, ["--output_dir", str(tmp_path), *HUB])
    uploads = hub.CheckpointUploads(cfg, tmp_path)
    for step in (2, 4, 6):
        uploads.push(fake_checkpoint(tmp_path, step)).result()
    assert sorted({path.split("/")[0] for path in HubRepo.branches["checkpoints"]}) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not [name for name, _ in RecordingApi.calls if name in ("create_commit", "list_repo_files")]
    assert capsys.readouterr().err == ""
