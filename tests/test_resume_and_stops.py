"""Resume never lies: a checkpoint another run could not continue exactly is refused before anything is written;
'latest' with nothing saved starts over; Ctrl-C/SIGTERM stop at an update boundary with a checkpoint that resumes
to the weights of an uninterrupted run."""

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, snapshot

TINY = ["--config", ROOT / "configs/tiny.yaml", "--validation_steps", 100]


def weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


@pytest.fixture
def checkpointed_run(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--max_train_steps", 4, "--checkpointing_steps", 2) == 0
    return out


@pytest.mark.parametrize("flags, message", [
    (["--train_batch_size", 4], "train_batch_size 8 (now 4)"),
    (["--gradient_accumulation_steps", 2], "gradient_accumulation_steps 1 (now 2)"),
    (["--unet", '{"block_out_channels": [16, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], '
                '"up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_head_dim": 16}'],
     "its UNet has block_out_channels=[16, 32] where this run's has [16, 64]"),
    (["--use_ema", "false"], "it carries an EMA but this run has --use_ema false"),
])
def test_a_checkpoint_this_run_cannot_continue_is_refused_before_any_write(checkpointed_run, train_unconditional,
                                                                          capsys, flags, message):
    before = snapshot(checkpointed_run)
    capsys.readouterr()
    assert train_unconditional(*TINY, "--output_dir", checkpointed_run, "--max_train_steps", 6,
                               "--resume_from_checkpoint", "latest", *flags) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert snapshot(checkpointed_run) == before


def test_a_text_checkpoint_is_refused_by_the_unconditional_script(tmp_path, train_unconditional, capsys):
    import train_text_to_image as script
    from conftest import run_script

    out = tmp_path / "t2i"
    unet = ('{"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 2, '
            '"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], '
            '"up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}')
    assert run_script(script, [*TINY, "--unet", unet, "--output_dir", out, "--max_train_steps", 2,
                               "--checkpointing_steps", 2, "--validation_prompts", "a 1"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert train_unconditional(*TINY, "--output_dir", out, "--resume_from_checkpoint", "latest") == 2
    assert "holds a UNet2DConditionModel, this script trains a UNet2DModel" in capsys.readouterr().err
    assert snapshot(out) == before


def test_latest_without_a_checkpoint_starts_over_like_a_fresh_run(tmp_path, train_unconditional, capsys):
    flags = [*TINY, "--max_train_steps", 3, "--checkpointing_steps", 100]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    assert train_unconditional(*flags, "--output_dir", killed, "--max_train_steps", 1) == 0  # no checkpoint written
    capsys.readouterr()
    assert train_unconditional(*flags, "--output_dir", killed, "--resume_from_checkpoint", "latest") == 0
    assert "has no checkpoint yet; starting over" in capsys.readouterr().out
    assert train_unconditional(*flags, "--output_dir", fresh) == 0
    a, b = weights(killed / "unet"), weights(fresh / "unet")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_a_checkpoint_that_resumes_exactly(tmp_path, train_unconditional, capsys, monkeypatch,
                                                              sig):
    from difftrain import objectives

    flags = [*TINY, "--max_train_steps", 8, "--checkpointing_steps", 8, "--use_ema", "--gradient_accumulation_steps", 2,
             "--logging_steps", 4]  # the stop at step 3 falls between two checks of the loss
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train_unconditional(*flags, "--output_dir", whole) == 0

    real_loss, calls = objectives.DiffusionObjective.loss, []

    def loss_then_signal(self, predict, x0):
        calls.append(1)
        if len(calls) == 6:  # mid-way through update 3's micro-batches
            os.kill(os.getpid(), sig)
        return real_loss(self, predict, x0)

    monkeypatch.setattr(objectives.DiffusionObjective, "loss", loss_then_signal)
    capsys.readouterr()
    assert train_unconditional(*flags, "--output_dir", stopped) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"stopped by {sig.name} at step 3 of 8" in err and "checkpoint-3 holds it" in err, err
    monkeypatch.setattr(objectives.DiffusionObjective, "loss", real_loss)
    assert train_unconditional(*flags, "--output_dir", stopped, "--resume_from_checkpoint", "latest") == 0
    for sub in ("unet", "unet_ema"):
        a, b = weights(whole / "checkpoint-8" / sub), weights(stopped / "checkpoint-8" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_checkpoints_and_grids_never_change_the_run(tmp_path, train_unconditional):
    """Saving the EMA builds a UNet (random init from the global RNG); maintenance must leave the RNG as it was."""
    flags = [*TINY, "--max_train_steps", 6, "--use_ema", "--save_model_epochs", 100]
    quiet, busy = tmp_path / "quiet", tmp_path / "busy"
    assert train_unconditional(*flags, "--output_dir", quiet, "--checkpointing_steps", 6) == 0
    assert train_unconditional(*flags, "--output_dir", busy, "--checkpointing_steps", 2, "--validation_steps", 2,
                               "--save_images_epochs", 1) == 0
    a, b = weights(quiet / "checkpoint-6" / "unet"), weights(busy / "checkpoint-6" / "unet")
    assert all(torch.equal(a[k], b[k]) for k in a)
