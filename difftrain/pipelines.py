"""Image generation from a trained UNet: the sampling loop from fixed per-image seeds, the network as a
predict(x_t, t) function (unconditional or with classifier-free guidance), grids and comparison sheets."""

from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from PIL import Image, ImageDraw

from .data.images import to_uint8


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same numbers on every device and whatever the batch."""
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def generate(predict: Callable, scheduler, shape: tuple[int, ...], seeds: list[int], num_inference_steps: int,
             device, dtype=torch.float32, **step_kwargs) -> torch.Tensor:
    """Sample len(seeds) images in [-1, 1]. Everything random about image k, its starting noise and the noise a
    stochastic scheduler adds at each step, comes from a generator seeded by seeds[k] alone, so image k is the
    same whatever the batch it is generated in. predict(x_t, t) → model output; `dtype` is the dtype of the
    latents and the scheduler's arithmetic."""
    generators = image_generators(seeds)
    if hasattr(scheduler, "noise_sampler_seed"):  # DPMSolverSDEScheduler: one Brownian tree per image
        scheduler.noise_sampler_seed = list(seeds)
    if "generator" in inspect.signature(scheduler.step).parameters:  # diffusers' randn_tensor takes a list
        step_kwargs.setdefault("generator", generators)
    # set_timesteps first: init_noise_sigma of sigma-based schedulers (Euler, LMS, ...) is the largest sigma of
    # the INFERENCE schedule, which it sets
    scheduler.set_timesteps(num_inference_steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        # from pure noise we start at step 0; left unset, diffusers looks the first timestep up and, when it repeats
        # (Karras sigmas on the cosine schedule map several sigmas to t=999), starts at its SECOND occurrence and
        # steps past the end (IndexError)
        scheduler.set_begin_index(0)
    noise = [torch.randn(shape, generator=g) for g in generators]
    x = torch.stack(noise).to(device=device, dtype=dtype) * scheduler.init_noise_sigma
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


def comparison_sheet(rows: list[tuple[str, torch.Tensor | None]], min_size: int = 32) -> Image.Image:
    """One row per (label, uint8 NCHW images or None): the label on the left, the images beside it. Small images
    are enlarged by an integer factor (nearest) so a row is at least `min_size` px tall and the label fits."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(draw.textlength(label)) for label, _ in rows) + 12
    strips = []
    for _, images in rows:
        if images is None:
            strips.append(None)
            continue
        strip = image_grid(images, cols=len(images)).convert("RGB")
        scale = max(1, math.ceil(min_size / strip.height))
        strips.append(strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST))
    row_h = max([s.height for s in strips if s is not None] + [min_size])
    width = label_w + max([s.width for s in strips if s is not None] + [0])
    sheet = Image.new("RGB", (width, row_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((label, _), strip) in enumerate(zip(rows, strips)):
        top = i * row_h
        left, upper, _, lower = draw.textbbox((0, 0), label)  # the default font may be a bitmap one: no anchors
        draw.text((6, top + (row_h - (lower - upper)) // 2 - upper), label, fill="black")
        if strip is not None:
            sheet.paste(strip, (label_w, top))
    return sheet


def unet_predictor(unet) -> Callable:
    """predict(x_t, t) for an unconditional UNet2DModel. The network runs in its own dtype (fp16/bf16 weights),
    the scheduler keeps the latents' dtype."""
    return lambda x, t: unet(x.to(unet.dtype), t).sample.to(x.dtype)


def guided_predictor(unet, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float) -> Callable:
    """predict(x_t, t) for a text-conditional UNet (UNet2DConditionModel) with classifier-free guidance:
    out = uncond + scale * (cond - uncond), with the unconditional and conditional halves in ONE batched forward.
    cond/uncond: encoder hidden states (batch, tokens, dim) for the images of this batch; uncond None or
    scale 1 means no guidance (one forward of the conditional half only)."""
    if uncond is None or guidance_scale == 1.0:
        return lambda x, t: unet(x.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.to(x.dtype)
    states = torch.cat([uncond, cond]).to(unet.dtype)

    def predict(x, t):
        out = unet(torch.cat([x, x]).to(unet.dtype), t, encoder_hidden_states=states).sample.to(x.dtype)
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return predict


class TextToImagePipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """A UNet2DConditionModel conditioned on a frozen text encoder's token states, in pixel space (or in a VAE's
    latent space when it has one): what train_text_to_image.py writes when it trains from scratch.

        pipe = TextToImagePipeline.from_pretrained("t2i-mnist")
        images = pipe("a handwritten digit three", guidance_scale=1.25).images

    Image k comes from a generator seeded `seed + k` alone, as in sample.py. Swap samplers the diffusers way:
    `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` (the saved one is the training DDPM).
    A LoRA trained on it loads as on Stable Diffusion: `pipe.load_lora_weights(lora_run_dir)`."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 1.25, num_images_per_prompt: int = 1, seed: int = 0, output_type: str = "pil"):
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        from .latents import decode
        from .text import TextEncoder

        prompts = [p for p in ([prompt] if isinstance(prompt, str) else prompt) for _ in range(num_images_per_prompt)]
        encoder = TextEncoder(self.tokenizer, self.text_encoder, "pipeline")
        cond = encoder.encode(prompts)
        uncond = encoder.encode([negative_prompt or ""] * len(prompts)) if guidance_scale != 1.0 else None
        size = self.unet.config.sample_size
        shape = (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        x = generate(guided_predictor(self.unet, cond, uncond, guidance_scale), self.scheduler, shape,
                     list(range(seed, seed + len(prompts))), num_inference_steps, self.device)
        images = to_uint8(decode(self.vae, x) if self.vae is not None else x).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return ImagePipelineOutput(images=images.astype(np.float32) / 255.0)
        return ImagePipelineOutput(images=[Image.fromarray(i[:, :, 0] if i.shape[2] == 1 else i) for i in images])
