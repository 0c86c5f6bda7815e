"""trainer.py: the set-up (what the run folder records, a folder that holds a run, the optimizer), seeds, gradient
checkpointing and mixed precision, the LR schedule under accumulation, the stop on a NaN loss (exact between the
checks --logging_steps spaces out) and what --logging_steps logs."""

import dataclasses
import os

import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from conftest import SHORT, TINY, reset_accelerate, snapshot
from difftrain import config, trainer, unconditional
from difftrain.unconditional_config import UnconditionalConfig


def weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def test_the_config_holds_what_was_asked_and_the_run_folder_what_was_resolved(tmp_path):
    """Unset options (seed, prediction type, EMA) are resolved by the run and written to training_config.yaml; the
    config object keeps what the user asked. The training scheduler is in the run folder from the start (the grids'
    samplers and sample.py read it) and in every checkpoint."""
    cfg = config.parse(UnconditionalConfig, [*map(str, TINY), "--output_dir", str(tmp_path / "run"),
                                                    "--max_train_steps", "2", "--checkpointing_steps", "2"])
    cfg = dataclasses.replace(cfg, seed=None)
    asked = config.to_dict(cfg)
    reset_accelerate()
    try:
        out = trainer.train(cfg, unconditional.build_recipe)
    finally:
        reset_accelerate()
    assert config.to_dict(cfg) == asked and cfg.seed is None and cfg.prediction_type is None
    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert isinstance(saved["seed"], int) and saved["prediction_type"] == "v_prediction" and saved["use_ema"] is True
    assert saved["logging_steps"] == 1 and cfg.logging_steps is None  # unset: every update on CPU
    # --config repeats it
    assert config.to_dict(config.from_dict(UnconditionalConfig, saved))["seed"] == saved["seed"]
    for folder in (out, out / "checkpoint-2"):
        assert DDPMScheduler.from_pretrained(folder / "scheduler").config.prediction_type == "v_prediction"


def test_refuses_another_run_in_the_same_folder(finished_run, train_unconditional, capsys):
    before = snapshot(finished_run)
    assert train_unconditional(*TINY, "--output_dir", finished_run) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_unconditional(*TINY, "--output_dir", finished_run, "--resume_from_checkpoint", "checkpoint-99") == 2
    assert "checkpoint-99: no complete checkpoint there (checkpoints in" in capsys.readouterr().err
    assert snapshot(finished_run) == before
    # explicit consent starts over: the old checkpoints go, so 'latest' cannot pick up the old run
    assert train_unconditional(*TINY, "--output_dir", finished_run, "--overwrite_output_dir",
                               "--max_train_steps", 4, "--checkpointing_steps", 3) == 0
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-3"]


def test_8bit_adam_without_bitsandbytes_says_how_to_install(tmp_path, train_unconditional, capsys):
    try:
        import bitsandbytes
    except ImportError:
        bitsandbytes = None
    if bitsandbytes is not None:
        pytest.skip("bitsandbytes is installed")
    assert train_unconditional(*TINY, "--output_dir", tmp_path / "run", "--use_8bit_adam") == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err


def test_same_seed_same_weights_another_seed_others(short_run, tmp_path, train_unconditional):
    a = weights(short_run / "unet")
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "b") == 0
    assert all(torch.equal(a[k], v) for k, v in weights(tmp_path / "b" / "unet").items())
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "c", "--seed", 1) == 0
    assert any(not torch.equal(a[k], v) for k, v in weights(tmp_path / "c" / "unet").items())


def test_gradient_checkpointing_changes_nothing_and_bf16_changes_the_arithmetic(short_run, tmp_path,
                                                                               train_unconditional):
    """Checkpointing recomputes the same activations: the same weights, bit for bit. bf16 autocast really runs (the
    weights differ from fp32's, slightly) and the shipped weights stay fp32."""
    a = weights(short_run / "unet")
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "ckpt", "--gradient_checkpointing") == 0
    assert all(torch.equal(a[k], v) for k, v in weights(tmp_path / "ckpt" / "unet").items())
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "bf16", "--mixed_precision", "bf16") == 0
    bf16 = weights(tmp_path / "bf16" / "unet")
    assert {v.dtype for v in bf16.values()} == {torch.float32}
    assert any(not torch.equal(a[k], v) for k, v in bf16.items())
    assert all(torch.allclose(a[k], v, atol=5e-2) for k, v in bf16.items())


def test_lr_schedule_counts_optimizer_updates_under_accumulation(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--gradient_accumulation_steps", 3,
                               "--max_train_steps", 4, "--checkpointing_steps", 4, "--validation_steps", 100,
                               "--lr_scheduler", "linear", "--lr_warmup_steps", 1) == 0
    state = torch.load(out / "checkpoint-4" / "custom_checkpoint_0.pkl", weights_only=False)
    assert state["last_epoch"] == 4 and state["_last_lr"] == [0.0]  # 4 updates = 12 batches; decayed to 0 at the end


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, train_unconditional, capsys, monkeypatch):
    from difftrain import objectives

    real_loss, calls = objectives.DiffusionObjective.loss, []

    def loss_turning_nan(self, predict, x0):
        calls.append(1)
        value = real_loss(self, predict, x0)
        return value * float("nan") if len(calls) >= 13 else value

    monkeypatch.setattr(objectives.DiffusionObjective, "loss", loss_turning_nan)
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--checkpointing_steps", 5) == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 13" in err and "checkpoint-10" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    # the pipeline on disk is the one saved at the end of epoch 1 (step 8), before the loss went bad
    assert yaml.safe_load((out / "checkpoint-10" / "trainer_state.json").read_text())["global_step"] == 10
    shipped = weights(out / "unet")
    assert all(torch.isfinite(v).all() for v in shipped.values())
    assert any(not torch.equal(shipped[k], v) for k, v in weights(out / "checkpoint-10" / "unet").items())


@pytest.mark.parametrize("on_device", [True, False], ids=["skipped-on-device", "checked-before-each-update"])
def test_a_nan_loss_between_checks_never_reaches_the_weights(tmp_path, train_unconditional, capsys, monkeypatch,
                                                            on_device):
    """--logging_steps 4: update 5's loss is NaN; the optimizer skips it and every update after it on device, and the
    check at step 8 stops the run naming step 5, with the weights and optimizer state of a run of 4 updates. Where
    the optimizer cannot skip on device (fp16, 8-bit Adam, DeepSpeed), each update is checked before it instead."""
    from difftrain import maintenance, objectives

    flags = [*TINY, "--validation_steps", 100, "--autoguidance_snapshot", 0]  # no guide snapshot: no check at step 6
    # (tiny.yaml's LR is constant: the same whatever max_train_steps)
    good = tmp_path / "good"
    assert train_unconditional(*flags, "--output_dir", good, "--max_train_steps", 4, "--checkpointing_steps", 4) == 0

    real_loss, calls, stopped = objectives.DiffusionObjective.loss, [], {}

    def loss_turning_nan(self, predict, x0):
        calls.append(1)
        value = real_loss(self, predict, x0)
        return value * float("nan") if len(calls) == 5 else value

    def stop_and_keep_the_state(run, loss, step):
        stopped["checked_at"] = run.global_step
        stopped["weights"] = {k: v.clone() for k, v in run.accelerator.unwrap_model(run.model).state_dict().items()}
        stopped["optimizer"] = run.optimizer.state_dict()["state"]
        stopped["ema"] = [p.clone() for p in run.weights.ema.shadow_params]
        real_stop(run, loss, step)

    real_stop = maintenance.stop_on_bad_loss
    monkeypatch.setattr(objectives.DiffusionObjective, "loss", loss_turning_nan)
    monkeypatch.setattr(maintenance, "stop_on_bad_loss", stop_and_keep_the_state)
    monkeypatch.setattr(trainer, "stop_on_bad_loss", stop_and_keep_the_state)
    if not on_device:
        monkeypatch.setattr(trainer, "skips_on_device", lambda accelerator, optimizer: False)
    capsys.readouterr()
    assert train_unconditional(*flags, "--output_dir", tmp_path / "bad", "--logging_steps", 4,
                               "--checkpointing_steps", 100) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss became nan at step 5; stopped before the update. Last good checkpoint: none" in last, last
    assert stopped["checked_at"] == (8 if on_device else 4)  # the check, or the update before the bad one
    expected = weights(good / "checkpoint-4" / "unet")
    assert all(torch.equal(stopped["weights"][k], v) for k, v in expected.items())
    expected = torch.load(good / "checkpoint-4" / "optimizer.bin", weights_only=False)["state"]
    assert expected.keys() == stopped["optimizer"].keys()
    assert all(torch.equal(stopped["optimizer"][i][name], expected[i][name])
               for i in expected for name in ("step", "exp_avg", "exp_avg_sq"))
    assert all(torch.isfinite(p).all() for p in stopped["ema"])  # it averaged good weights only


def test_logging_steps_logs_the_mean_loss_of_each_window_and_changes_no_weight(short_run, tmp_path,
                                                                              train_unconditional, monkeypatch):
    from accelerate import Accelerator

    from difftrain import objectives

    real_loss, losses, logged = objectives.DiffusionObjective.loss, [], {}

    def recorded_loss(self, predict, x0):
        value = real_loss(self, predict, x0)
        losses.append(value.item())
        return value

    def recorded_log(accelerator, values, step=None, **kwargs):  # what the trackers are given
        logged[step] = values

    monkeypatch.setattr(objectives.DiffusionObjective, "loss", recorded_loss)
    monkeypatch.setattr(Accelerator, "log", recorded_log)
    out = tmp_path / "run"
    assert train_unconditional(*SHORT, "--output_dir", out, "--logging_steps", 2) == 0
    assert list(logged) == [2, 3]  # every 2 updates, and the last
    assert all({"loss", "lr", "grad_norm", "images_per_s"} <= values.keys() for values in logged.values())
    assert len(losses) == 3 and logged[2]["loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)
    assert logged[3]["loss"] == pytest.approx(losses[2], rel=1e-6)
    a = weights(short_run / "unet")  # logged every update
    assert all(torch.equal(a[k], v) for k, v in weights(out / "unet").items())
