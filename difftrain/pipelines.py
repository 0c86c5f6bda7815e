"""Pipeline folders and image generation from a trained UNet."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .data.images import to_uint8


@torch.no_grad()
def generate(predict: Callable, scheduler, shape: tuple[int, ...], seeds: list[int], num_inference_steps: int,
             device, dtype=torch.float32, **step_kwargs) -> torch.Tensor:
    """Sample len(seeds) images in [-1, 1]. Image k starts from noise seeded by seeds[k] alone, so it is the
    same whatever the batch it is generated in. predict(x_t, t) → model output."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    x = torch.stack(noise).to(device=device, dtype=dtype) * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=device)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(predict(model_input, t), t, x, **step_kwargs).prev_sample
    return x.float()


def image_grid(images_u8: torch.Tensor, cols: int | None = None) -> Image.Image:
    """uint8 NCHW → one PIL grid image."""
    n, c, h, w = images_u8.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images_u8.permute(0, 2, 3, 1).cpu().numpy()):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return Image.fromarray(grid[:, :, 0] if c == 1 else grid)


def unet_predictor(unet) -> Callable:
    """predict(x_t, t) for an unconditional UNet2DModel."""
    return lambda x, t: unet(x, t).sample


def sample_grid(unet, training_scheduler_config, *, num_images: int, steps: int, seed: int = 0) -> Image.Image:
    """DDIM (eta 0) samples from fixed seeds, so grids from different steps of a run compare."""
    from .schedulers import scheduler_from_training_config

    scheduler = scheduler_from_training_config("ddim", training_scheduler_config)
    param = next(unet.parameters())
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    images = generate(unet_predictor(unet), scheduler, shape, list(range(seed, seed + num_images)), steps,
                      param.device, param.dtype)
    return image_grid(to_uint8(images))
