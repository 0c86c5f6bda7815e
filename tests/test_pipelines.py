"""pipelines.py used directly: the sampling loop from per-image seeds (generate) and classifier-free guidance."""

import importlib.util

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from conftest import TINY_UNET_SIZE as SIZE, tiny_2d_unet, tiny_unet
from difftrain.pipelines import generate, guided_predictor, unet_predictor
from difftrain.schedulers import SCHEDULERS, scheduler_from_training_config

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
STOCHASTIC = [n for n, spec in SCHEDULERS.items() if spec.stochastic and (spec.requires is None or HAS_TORCHSDE)]


@pytest.mark.parametrize("name", ["ddim", *STOCHASTIC])
def test_image_k_is_the_same_whatever_the_batch(name):
    """Per-image generators: the starting noise AND every step's fresh noise of image k come from seed k alone.
    (Batched convolutions differ from single ones by float rounding only, hence the tolerance.)"""
    unet, training = tiny_2d_unet(), DDPMScheduler().config
    predict = unet_predictor(unet)
    batched = generate(predict, scheduler_from_training_config(name, training), (3, SIZE, SIZE), [0, 1, 2, 3], 5, "cpu")
    one_by_one = torch.cat([generate(predict, scheduler_from_training_config(name, training), (3, SIZE, SIZE),
                                     [k], 5, "cpu") for k in range(4)])
    scale = batched.abs().max()
    assert (batched - one_by_one).abs().max() <= 1e-4 * max(1.0, float(scale)), name
    other_seeds = generate(predict, scheduler_from_training_config(name, training), (3, SIZE, SIZE), [4, 5, 6, 7], 5,
                           "cpu")
    assert (batched - other_seeds).abs().max() > 0.1  # the check above can fail


def test_ddim_eta_0_is_deterministic_and_eta_1_is_seeded_noise():
    unet, training = tiny_2d_unet(), DDPMScheduler().config
    predict, shape = unet_predictor(unet), (3, SIZE, SIZE)
    reused = scheduler_from_training_config("ddim", training)
    runs = [generate(predict, s, shape, [0, 1], 8, "cpu", eta=0.0)
            for s in (reused, reused, scheduler_from_training_config("ddim", training))]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    noisy = [generate(predict, scheduler_from_training_config("ddim", training), shape, [0, 1], 8, "cpu", eta=1.0)
             for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])
    assert (noisy[0] - runs[0]).abs().max() > 0.01


@pytest.mark.parametrize("name", ["dpm++2m_karras", "dpm++2m_sde_karras"])
def test_karras_sigmas_on_the_cosine_schedule_run_every_step(name):
    """Karras sigmas on the cosine schedule map several sigmas to t=999; diffusers then started at the timestep's
    second occurrence and stepped past the end (IndexError) unless told to begin at 0, as generate() does."""
    training = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config
    scheduler = scheduler_from_training_config(name, training)
    scheduler.set_timesteps(20)
    assert len(set(scheduler.timesteps.tolist())) < len(scheduler.timesteps)  # the repeats that tripped it
    calls = []
    x = generate(lambda x, t: calls.append(t) or torch.zeros_like(x), scheduler, (1, 8, 8), [0, 1], 20, "cpu")
    assert len(calls) == 20 and torch.isfinite(x).all()


def test_classifier_free_guidance_is_one_batched_forward():
    unet = tiny_unet(0, UNet2DConditionModel, cross_attention_dim=8, attention_head_dim=2,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    cond, uncond = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor(500)
    with torch.no_grad():
        eps_cond = unet(x, t, encoder_hidden_states=cond).sample
        eps_uncond = unet(x, t, encoder_hidden_states=uncond).sample
        batches = []
        hook = unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
        guided = guided_predictor(unet, cond, uncond, 3.0)(x, t)
        unguided = guided_predictor(unet, cond, uncond, 1.0)(x, t)
        hook.remove()
    assert batches == [4, 2]  # cond + uncond in one forward; scale 1 skips the unconditional half
    assert torch.allclose(guided, eps_uncond + 3.0 * (eps_cond - eps_uncond), atol=1e-5)
    assert torch.allclose(unguided, eps_cond, atol=1e-6)
