"""End-to-end runs of train_unconditional.py on tiny models (real training, CPU, seconds each)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMPipeline, UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT, SHORT, TINY, snapshot


def weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def test_tiny_run_loads_with_plain_diffusers(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out) == 0
    pipe = DDPMPipeline.from_pretrained(out)
    images = pipe(batch_size=4, num_inference_steps=10, output_type="np").images
    assert images.shape == (4, 16, 16, 1) and images.min() >= 0 and images.max() <= 1 and images.std() > 0
    # the defaults: v-prediction on the cosine schedule, EMA weights shipped
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert saved["seed"] == 0 and saved["resolution"] == 16 and saved["prediction_type"] == "v_prediction"
    for step in (10, 20):  # 2x2 grids of 16 px samples
        assert Image.open(out / "samples" / f"step-{step}.png").size == (32, 32)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    final = UNet2DModel.from_pretrained(out / "checkpoint-20" / "unet_ema")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), pipe.unet.state_dict().values()))


def test_resume_gives_identical_weights_optimizer_and_ema(tmp_path, train_unconditional):
    """N updates + resume N more == 2N in one run, bit for bit, with accumulation, EMA, flips and a
    schedule with warm-up: the data position, RNG, LR schedule, optimizer and EMA all come back."""
    flags = [*TINY, "--max_train_samples", 40, "--gradient_accumulation_steps", 2, "--max_train_steps", 8,
             "--checkpointing_steps", 4, "--use_ema", "--random_flip", "--lr_scheduler", "cosine",
             "--lr_warmup_steps", 2, "--validation_steps", 100]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_unconditional(*flags, "--output_dir", whole) == 0
    resumed.mkdir()
    os.system(f"cp -r {whole / 'checkpoint-4'} {resumed}/")  # step 4 is mid-epoch (3 updates per epoch)
    assert train_unconditional(*flags, "--output_dir", resumed, "--resume_from_checkpoint", "latest") == 0
    for sub in ("unet", "unet_ema"):
        a, b = weights(whole / "checkpoint-8" / sub), weights(resumed / "checkpoint-8" / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    opt_a = torch.load(whole / "checkpoint-8" / "optimizer.bin", weights_only=False)["state"]
    opt_b = torch.load(resumed / "checkpoint-8" / "optimizer.bin", weights_only=False)["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    # and the resumed run did not start over: its first checkpoint is the copied one
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_checkpoints_total_limit(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--checkpointing_steps", 5,
                               "--checkpoints_total_limit", 2, "--validation_steps", 100) == 0
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-15", "checkpoint-20"]


def test_ema_weights_differ_from_raw_and_land_in_the_pipeline(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--use_ema", "--ema_max_decay", "0.9") == 0
    shipped, ema, raw = weights(out / "unet"), weights(out / "checkpoint-20" / "unet_ema"), weights(out / "checkpoint-20" / "unet")
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(shipped[k], raw[k]) for k in shipped)


def test_v_prediction_is_saved_in_the_scheduler(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--prediction_type", "v_prediction",
                               "--max_train_steps", 2, "--validation_steps", 100) == 0
    assert DDPMPipeline.from_pretrained(out).scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("flags,message", [
    (["--dataset_name", "nobody/absent"], "could not load dataset 'nobody/absent'"),
    (["--image_column", "picture"], "--image_column 'picture' not in the dataset; its columns are: image, label"),
    (["--resolution", "17"], "--resolution 17 is not divisible by 2"),
    (["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
    (["--unet", '{"block_out_chanels": [8]}'], "'block_out_chanels' is not a UNet2DModel argument. Did you mean block_out_channels"),
])
def test_bad_input_is_one_line_and_leaves_the_output_dir(finished_run, train_unconditional, capsys, flags, message):
    before = snapshot(finished_run)
    capsys.readouterr()
    code = train_unconditional(*TINY, "--output_dir", finished_run, "--resume_from_checkpoint", "latest", *flags)
    last = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars may come before it
    assert code == 2 and last.startswith("error: ") and message in last, last
    assert snapshot(finished_run) == before


def test_two_processes_on_cpu(tmp_path):
    """Two ranks on CPU (gloo): runs, every rank's RNG in the checkpoint, loss logged once per step.
    `accelerate launch --cpu --num_processes 2` starts one process unless MPI is set up; torchrun with
    ACCELERATE_USE_CPU is the same Accelerate MULTI_CPU path without MPI."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "train_unconditional.py"), *map(str, TINY), "--output_dir", str(out),
           "--report_to", "tensorboard", "--max_train_steps", "6", "--checkpointing_steps", "3"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoint-6"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-3", "checkpoint-6"]
    assert "4 updates/epoch" in proc.stdout + proc.stderr  # 64 images / (8 per batch x 2 ranks)
    # one LR-schedule step per update, not one per rank (diffusers #3954)
    assert torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)["last_epoch"] == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in out.rglob("events.out.tfevents.*")]
    losses = [e.Scalars("loss") for e in events if "loss" in e.Tags()["scalars"]]
    assert len(losses) == 1 and [s.step for s in losses[0]] == [1, 2, 3, 4, 5, 6]  # logged once, by rank 0
    assert np.isfinite([s.value for s in losses[0]]).all()


def test_a_model_config_file_and_a_pipeline_to_continue_from(short_run, tmp_path, train_unconditional):
    a = weights(short_run / "unet")
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "fromfile", "--model_config_name_or_path",
                               short_run / "unet" / "config.json") == 0
    assert weights(tmp_path / "fromfile" / "unet").keys() == a.keys()
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "continued", "--pretrained_model_name_or_path",
                               short_run, "--learning_rate", 1e-9, "--lr_scheduler", "constant") == 0
    continued = weights(tmp_path / "continued" / "unet")
    assert all(torch.allclose(a[k], continued[k], atol=1e-5) for k in a)  # started from a's weights


def test_wandb_offline(tmp_path, train_unconditional, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert train_unconditional(*TINY, "--output_dir", tmp_path / "run", "--report_to", "wandb",
                               "--max_train_steps", 2, "--validation_steps", 2) == 0
    runs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_objective_flags_reach_the_saved_scheduler(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--max_train_steps", 3, "--validation_steps", 3,
                               "--prediction_type", "v_prediction", "--rescale_betas_zero_snr", "--snr_gamma", 5,
                               "--noise_offset", 0.05, "--input_perturbation", 0.1,
                               "--ddpm_beta_schedule", "squaredcos_cap_v2") == 0
    scheduler = DDPMPipeline.from_pretrained(out).scheduler
    assert scheduler.config.rescale_betas_zero_snr is True and scheduler.alphas_cumprod[-1] < 1e-6
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
