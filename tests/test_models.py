"""models.py: a UNet built from config arguments and checked against the data, UNet configs read from files and
folders, and the training noise scheduler."""

import dataclasses

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, EDMEulerScheduler, UNet2DModel

from difftrain import config
from difftrain.errors import UserError
from difftrain.models import _check_forward, build_unet, load_unet_config, noise_scheduler_for

SMALL = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


def test_build_unet_takes_size_and_channels_from_the_data_and_names_what_is_wrong():
    unet = build_unet(SMALL, resolution=12, channels=1)
    assert (unet.config.sample_size, unet.config.in_channels, unet.config.out_channels) == (12, 1, 1)
    with pytest.raises(UserError, match=r"--resolution 13 is not divisible by 2, .* \(2 blocks\); use --resolution 12"):
        build_unet(SMALL, resolution=13, channels=1)
    with pytest.raises(UserError, match="'layers_per_blok' is not a UNet2DModel argument. Did you mean layers_per_b"):
        build_unet({**SMALL, "layers_per_blok": 2}, resolution=12, channels=1)
    with pytest.raises(UserError, match="unet.in_channels is 3 but the data gives 1"):
        build_unet({**SMALL, "in_channels": 3}, resolution=12, channels=1)


def test_the_forward_check_is_one_line_and_leaves_the_random_numbers_alone():
    """A UNet with dropout draws random numbers in a training-mode forward; the check must not shift the run's."""
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, dropout=0.1, **SMALL).train()
    torch.manual_seed(0)
    _check_forward(unet, 3, 8, None)
    after_check = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_check)
    with pytest.raises(UserError, match=r"^--unet: the UNet does not run on 1x8x8 inputs \(.*\); check its"):
        _check_forward(unet, 1, 8, None)


def test_a_saved_pipeline_gives_its_unet_config_and_its_training_scheduler(tmp_path):
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, **SMALL)
    trained_with = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", prediction_type="epsilon")
    DDPMPipeline(unet=unet, scheduler=trained_with).save_pretrained(tmp_path / "pipe")
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "unet", tmp_path / "pipe" / "unet" / "config.json"):
        assert list(load_unet_config(str(path), "--flag")["block_out_channels"]) == [8, 16], path
    with pytest.raises(UserError, match="^--model_config_name_or_path .*nothing: no UNet config there"):
        load_unet_config(str(tmp_path / "nothing"), "--model_config_name_or_path")

    scratch = config.TrainConfig()
    fresh = noise_scheduler_for(scratch)  # from the flags: v-prediction on the cosine schedule unless told otherwise
    assert isinstance(fresh, DDPMScheduler) and fresh.config.prediction_type == "v_prediction"
    assert (fresh.config.beta_schedule, fresh.config.num_train_timesteps) == ("squaredcos_cap_v2", 1000)
    continued = dataclasses.replace(scratch, pretrained_model_name_or_path=str(tmp_path / "pipe"))
    kept = noise_scheduler_for(continued)  # the pretrained betas and prediction type
    assert (kept.config.num_train_timesteps, kept.config.beta_schedule, kept.config.prediction_type) == \
           (100, "linear", "epsilon")
    overridden = noise_scheduler_for(dataclasses.replace(continued, prediction_type="v_prediction"))
    assert overridden.config.prediction_type == "v_prediction" and overridden.config.num_train_timesteps == 100
    edm = noise_scheduler_for(dataclasses.replace(scratch, objective="edm", sigma_data=0.7))
    assert isinstance(edm, EDMEulerScheduler) and edm.config.sigma_data == 0.7
