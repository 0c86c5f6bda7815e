"""Sampling schedulers by name: built from the TRAINING scheduler config, with overrides checked, and each one
landing on x0 when given the exact model output for a one-point data distribution."""

import importlib.util

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from difftrain import schedulers
from difftrain.errors import UserError
from difftrain.pipelines import generate
from difftrain.schedulers import (
    EDM_SCHEDULERS,
    SCHEDULERS,
    check_num_inference_steps,
    default_scheduler,
    describe_schedulers,
    scheduler_from_training_config,
    step_options,
)

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None


def runnable(name: str) -> bool:
    return SCHEDULERS[name].requires is None or HAS_TORCHSDE


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_name_keeps_the_training_noise_schedule(name):
    training = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2",
                             prediction_type="v_prediction")
    if not runnable(name):
        with pytest.raises(UserError, match="pip install torchsde"):
            scheduler_from_training_config(name, training.config)
        return
    s = scheduler_from_training_config(name, training.config)
    assert isinstance(s, SCHEDULERS[name].cls)
    assert s.config.prediction_type == "v_prediction"
    assert s.config.num_train_timesteps == 500
    assert s.config.beta_schedule == "squaredcos_cap_v2"
    assert torch.allclose(s.alphas_cumprod, training.alphas_cumprod)
    for key, value in SCHEDULERS[name].kwargs.items():
        assert s.config[key] == value


def test_a_config_in_memory_and_the_same_config_read_from_disk_give_the_same_scheduler(tmp_path):
    training = DDPMScheduler(beta_schedule="squaredcos_cap_v2")  # clip_sample, spacing etc. left at defaults
    training.save_config(tmp_path)
    from_disk = DDPMScheduler.load_config(tmp_path)
    for name in ("heun", "dpm++2m", "euler"):
        a = scheduler_from_training_config(name, training.config)
        b = scheduler_from_training_config(name, from_disk)
        assert {k: v for k, v in a.config.items() if not k.startswith("_")} == \
               {k: v for k, v in b.config.items() if not k.startswith("_")}, name


def one_point_oracle(training, x0: torch.Tensor):
    """The exact model output when the data is the single image x0, at any (possibly fractional) timestep."""
    alphas = training.alphas_cumprod.double()
    prediction_type = training.config.prediction_type

    def predict(x, t):
        t = float(t)
        lo = int(np.floor(t))
        hi, frac = min(lo + 1, len(alphas) - 1), t - lo
        a = alphas[lo] * (1 - frac) + alphas[hi] * frac
        eps = (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
        if prediction_type == "epsilon":
            return eps.float()
        if prediction_type == "v_prediction":
            return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()
        return x0.expand_as(x).float()

    return predict


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_lands_on_the_data_with_an_exact_model(name, prediction_type):
    """Wiring check for every name and prediction type: timesteps, input scaling and output conversion all agree
    with the training schedule. (pndm and deis end at t=0, not t=-1: one step of noise short, ~0.03.)"""
    if not runnable(name):
        pytest.skip("needs torchsde")
    training = DDPMScheduler(prediction_type=prediction_type)
    if prediction_type not in SCHEDULERS[name].prediction_types:
        with pytest.raises(UserError, match="cannot sample a sample model"):
            scheduler_from_training_config(name, training.config)
        return
    x0 = torch.linspace(-0.9, 0.9, 3 * 8 * 8).reshape(3, 8, 8).double()
    images = generate(one_point_oracle(training, x0), scheduler_from_training_config(name, training.config),
                      (3, 8, 8), [0, 1], 10, "cpu")
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert (images - x0.float()).abs().max() < 0.05


def test_unknown_name_lists_the_names_and_suggests_one():
    with pytest.raises(UserError) as e:
        scheduler_from_training_config("dimm", DDPMScheduler().config)
    message = str(e.value)
    assert all(name in message for name in SCHEDULERS) and "Did you mean ddim" in message


def test_training_clip_sample_is_kept_by_every_scheduler_that_can_clip():
    clipped, unclipped = DDPMScheduler(clip_sample=True).config, DDPMScheduler(clip_sample=False).config
    assert scheduler_from_training_config("ddim", clipped).config.clip_sample is True
    assert scheduler_from_training_config("heun", clipped).config.clip_sample is True
    assert scheduler_from_training_config("ddim", unclipped).config.clip_sample is False
    # no clip_sample in DPM-Solver/UniPC/DEIS: thresholding with sample_max_value 1 clips x0 to [-1, 1]
    for name in ("dpm++2m", "unipc", "deis"):
        s = scheduler_from_training_config(name, clipped)
        assert s.config.thresholding is True and s.config.sample_max_value == 1.0, name
        assert scheduler_from_training_config(name, unclipped).config.thresholding is False
        assert scheduler_from_training_config(name, clipped, clip_sample=False).config.thresholding is False
    x0 = torch.tensor([[[[-3.0, 0.5], [2.0, -0.2]]]])
    clipped_x0 = scheduler_from_training_config("dpm++2m", clipped)._threshold_sample(x0)
    assert torch.equal(clipped_x0, x0.clamp(-1, 1))


def test_overrides_apply_or_say_which_schedulers_have_them():
    training = DDPMScheduler().config
    euler = scheduler_from_training_config("euler", training, timestep_spacing="trailing")
    assert euler.config.timestep_spacing == "trailing"
    assert scheduler_from_training_config("dpm++2m_karras", training).config.use_karras_sigmas is True
    plain = scheduler_from_training_config("dpm++2m_karras", training, use_karras_sigmas=False)
    assert plain.config.use_karras_sigmas is False
    assert scheduler_from_training_config("ddim", training, thresholding=True).config.thresholding is True
    with pytest.raises(UserError, match="euler_a.*has no use_karras_sigmas.*dpm\\+\\+2m"):
        scheduler_from_training_config("euler_a", training, use_karras_sigmas=True)
    with pytest.raises(UserError, match="has no clip_sample"):
        scheduler_from_training_config("euler", training, clip_sample=True)
    scheduler_from_training_config("euler", training, clip_sample=False)  # nothing to turn off: fine


def test_eta_is_for_ddim_only():
    training = DDPMScheduler().config
    assert step_options(scheduler_from_training_config("ddim", training), eta=0.5) == {"eta": 0.5}
    with pytest.raises(UserError, match="--eta applies to ddim only"):
        step_options(scheduler_from_training_config("ddpm", training), eta=0.5)
    assert step_options(scheduler_from_training_config("ddpm", training), eta=0.5, strict=False) == {}


def test_steps_are_limited_by_the_training_timesteps():
    check_num_inference_steps("ddpm", DDPMScheduler(num_train_timesteps=100).config, 100)
    with pytest.raises(UserError, match="too many for ddpm on a model with 100 training timesteps; use at most 100"):
        check_num_inference_steps("ddpm", DDPMScheduler(num_train_timesteps=100).config, 101)
    with pytest.raises(UserError, match="too many for dpm\\+\\+2m .* use at most 99"):
        check_num_inference_steps("dpm++2m", DDPMScheduler(num_train_timesteps=100).config, 100)
    with pytest.raises(UserError, match="at least 1"):
        check_num_inference_steps("ddim", DDPMScheduler().config, 0)
    check_num_inference_steps("euler", EDMEulerScheduler().config, 5000)  # continuous time: no limit


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if runnable(n)])
def test_every_name_runs_at_1_step_and_at_the_most_steps_allowed(name):
    training = DDPMScheduler(num_train_timesteps=40).config
    steps = 40 if SCHEDULERS[name].all_timesteps_ok else 39
    check_num_inference_steps(name, training, steps)
    for n in (1, steps):
        out = generate(lambda x, t: torch.zeros_like(x), scheduler_from_training_config(name, training), (1, 2, 2),
                       [0], n, "cpu")
        assert torch.isfinite(out).all()


def test_edm_models_get_the_edm_table():
    edm = EDMEulerScheduler(sigma_max=40.0, prediction_type="v_prediction").config
    assert isinstance(scheduler_from_training_config("euler", edm), EDMEulerScheduler)
    s = scheduler_from_training_config("dpm++2m", edm)
    assert isinstance(s, EDMDPMSolverMultistepScheduler)
    assert s.config.sigma_max == 40.0 and s.config.prediction_type == "v_prediction"
    assert default_scheduler(edm) == "euler" and default_scheduler(DDPMScheduler().config) == "euler_a"
    assert default_scheduler(DDPMScheduler(prediction_type="sample").config) == "ddim"  # euler_a cannot step x0
    names = ", ".join(EDM_SCHEDULERS).replace("+", "\\+")
    with pytest.raises(UserError, match=f"for an EDM model; choose one of: {names}"):
        scheduler_from_training_config("ddim", edm)


def test_missing_torchsde_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(schedulers.importlib.util, "find_spec", lambda n, *a: None if n == "torchsde" else real(n, *a))
    with pytest.raises(UserError, match="^scheduler 'dpm\\+\\+_sde' needs torchsde: pip install torchsde.$"):
        scheduler_from_training_config("dpm++_sde", DDPMScheduler().config)


def test_listing_has_one_line_per_name():
    lines = describe_schedulers().splitlines()
    for table in (SCHEDULERS, EDM_SCHEDULERS):
        for name, spec in table.items():
            assert any(line.split()[:2] == [name, spec.cls.__name__] for line in lines), name
    assert DDIMScheduler.__name__ in describe_schedulers()
