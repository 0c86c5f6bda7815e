"""The loop learns: trained on one image, DDIM-50 from pure noise reproduces it (the seed demo's sanity check)."""

import pytest
from diffusers import DDPMPipeline

from conftest import OVERFIT_SIZE, psnr, red_circle, train_overfit
from difftrain.data import to_uint8
from difftrain.pipelines import generate, unet_predictor
from difftrain.schedulers import default_scheduler, scheduler_from_training_config


def ddim50_psnr(folder, scheduler: str = "ddim", steps: int = 50) -> list[float]:
    pipe = DDPMPipeline.from_pretrained(folder)
    ddim = scheduler_from_training_config(scheduler, pipe.scheduler.config)
    shape = (3, OVERFIT_SIZE, OVERFIT_SIZE)
    samples = to_uint8(generate(unet_predictor(pipe.unet), ddim, shape, [0, 1, 2, 3], steps, "cpu"))
    return [psnr(s.permute(1, 2, 0).numpy(), red_circle(OVERFIT_SIZE)) for s in samples]


def test_single_image_overfit_epsilon(overfit_epsilon_model):
    scores = ddim50_psnr(overfit_epsilon_model)
    print("PSNR dB", [round(s, 1) for s in scores])
    assert min(scores) >= 25, scores


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_single_image_overfit_v_and_x0(one_image_dataset, tmp_path, prediction_type):
    folder = train_overfit(one_image_dataset, tmp_path / prediction_type, prediction_type)
    assert DDPMPipeline.from_pretrained(folder).scheduler.config.prediction_type == prediction_type
    scores = ddim50_psnr(folder)
    print(prediction_type, "PSNR dB", [round(s, 1) for s in scores])
    assert min(scores) >= 25, scores
    if prediction_type == "v_prediction":  # the saved config drives DPM-Solver++ correctly too
        dpm = ddim50_psnr(folder, "dpm++2m", steps=20)
        print("v dpm++2m-20 PSNR dB", [round(s, 1) for s in dpm])
        assert min(dpm) >= 25, dpm


def test_single_image_overfit_edm(one_image_dataset, tmp_path):
    """EDM preconditioning around the same UNet; the saved EDMEulerScheduler samples it with no extra flags."""
    folder = train_overfit(one_image_dataset, tmp_path / "edm", extra=["--objective", "edm"])
    config = DDPMPipeline.from_pretrained(folder).scheduler.config
    assert default_scheduler(config) == "euler" and config.sigma_data == 0.5
    scores = ddim50_psnr(folder, "euler")
    print("edm PSNR dB", [round(s, 1) for s in scores])
    assert min(scores) >= 25, scores
