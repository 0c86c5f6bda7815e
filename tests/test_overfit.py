"""The loop learns: trained on one image, DDIM-50 from pure noise reproduces it (the seed demo's sanity check)."""

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from PIL import Image

from conftest import psnr, red_circle
from difftrain.data import to_uint8
from difftrain.pipelines import generate, unet_predictor
from difftrain.schedulers import scheduler_from_training_config

SIZE = 8  # the smallest size that still shows a disc; 16 px needs ~4x the CPU time for the same PSNR
OVERFIT_UNET = ('{"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,'
                ' "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}')


@pytest.fixture(scope="module")
def one_image_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-image") / "data"
    image = Image.fromarray(red_circle(SIZE))
    # 64 copies of the one image, so that one batch holds 64 noise levels of it
    datasets.Dataset.from_dict({"image": [image] * 64}, features=datasets.Features(image=datasets.Image())
                               ).save_to_disk(str(folder))
    return folder


def overfit(train_unconditional, data, out, prediction_type, steps=600):
    assert train_unconditional(
        "--dataset_name", data, "--output_dir", out, "--resolution", SIZE, "--unet", OVERFIT_UNET,
        "--prediction_type", prediction_type, "--train_batch_size", 64, "--max_train_steps", steps,
        "--learning_rate", 2e-3, "--lr_scheduler", "constant", "--lr_warmup_steps", 0, "--use_ema",
        "--checkpointing_steps", 10_000, "--validation_steps", 10_000, "--save_model_epochs", 10_000,
        "--report_to", "none", "--seed", 0,
    ) == 0
    pipe = DDPMPipeline.from_pretrained(out)
    ddim = scheduler_from_training_config("ddim", pipe.scheduler.config)
    samples = to_uint8(generate(unet_predictor(pipe.unet), ddim, (3, SIZE, SIZE), [0, 1, 2, 3], 50, "cpu"))
    return [psnr(s.permute(1, 2, 0).numpy(), red_circle(SIZE)) for s in samples]


def test_single_image_overfit_epsilon(one_image_dataset, tmp_path, train_unconditional):
    scores = overfit(train_unconditional, one_image_dataset, tmp_path / "eps", "epsilon")
    print("PSNR dB", [round(s, 1) for s in scores])
    assert min(scores) >= 25, scores
