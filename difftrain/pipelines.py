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

from . import latents  # imported here: diffusers loads a vae/ of library "difftrain.latents" only once it is imported
from .autoguidance import GUIDANCE_INTERVAL, guidance_interval
from .classes import CLASS_GUIDANCE
from .clusters import drawn_names
from .data.images import to_uint8


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same numbers on every device and whatever the batch."""
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def generate(predict: Callable, scheduler, shape: tuple[int, ...], seeds: list[int], num_inference_steps: int,
             device, dtype=torch.float32, *, init: torch.Tensor | None = None, strength: float = 1.0,
             mask: torch.Tensor | None = None, repaint=None, **step_kwargs) -> torch.Tensor:
    """Sample len(seeds) images in [-1, 1]. Everything random about image k, its starting noise and the noise a
    stochastic scheduler adds at each step, comes from a generator seeded by seeds[k] alone, so image k is the
    same whatever the batch it is generated in. predict(x_t, t) → model output; `dtype` is the dtype of the
    latents and the scheduler's arithmetic.

    img2img (SDEdit): `init` (N, *shape) is noised to the timestep `strength` of the way up the schedule and only
    the rest is denoised: strength 0 returns it as it is, 1 starts from pure noise. Inpainting: `mask` (N, 1, h, w),
    1 = repaint; after every step the known region (mask 0) is `init` re-noised to the next timestep with the
    image's own starting noise (diffusers' inpainting for ordinary UNets, the RePaint idea), and after the last step
    `init` itself. `repaint` (a repaint.Resampling) adds RePaint's jumps: the steps run in its order, and where a step
    comes again the sample first goes back up the schedule to that step's noise level."""
    generators = image_generators(seeds)
    if hasattr(scheduler, "noise_sampler_seed"):  # DPMSolverSDEScheduler: one Brownian tree per image
        scheduler.noise_sampler_seed = list(seeds)
    if "generator" in inspect.signature(scheduler.step).parameters:  # diffusers' randn_tensor takes a list
        step_kwargs.setdefault("generator", generators)
    # set_timesteps first: init_noise_sigma of sigma-based schedulers (Euler, LMS, ...) is the largest sigma of
    # the INFERENCE schedule, which it sets
    scheduler.set_timesteps(num_inference_steps, device=device)
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device=device, dtype=dtype)
    start = 0 if init is None or strength >= 1.0 else \
        (num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if init is not None and len(timesteps) == 0:  # strength 0: nothing to denoise
        return init.float()
    if hasattr(scheduler, "set_begin_index"):
        # from pure noise we start at step 0; left unset, diffusers looks the first timestep up and, when it repeats
        # (Karras sigmas on the cosine schedule map several sigmas to t=999), starts at its SECOND occurrence and
        # steps past the end (IndexError)
        scheduler.set_begin_index(start)
    if init is not None:
        init = init.to(device=device, dtype=dtype)
    if mask is not None:
        mask = mask.to(device=device, dtype=dtype)
    x = noise * scheduler.init_noise_sigma if start == 0 else scheduler.add_noise(init, noise, timesteps[:1])
    done = -1
    for i in repaint.order(len(timesteps)) if repaint else range(len(timesteps)):
        if i <= done:  # a RePaint jump back: from after step `done` up to before step i
            x = repaint.renoise(scheduler, x, timesteps, start, done + 1, i, generators)
        t = timesteps[i]
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(predict(model_input, t), t, x, **step_kwargs).prev_sample
        if mask is not None:
            known = init if i + 1 == len(timesteps) else scheduler.add_noise(init, noise, timesteps[i + 1 : i + 2])
            x = mask * x + (1 - mask) * known
        done = i
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


def guided_predictor(unet, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float,
                     key: str = "encoder_hidden_states") -> Callable:
    """predict(x_t, t) with classifier-free guidance: out = uncond + scale * (cond - uncond), with the unconditional
    and conditional halves in ONE batched forward. cond/uncond go to the UNet as `key`: encoder hidden states
    (batch, tokens, dim) of a text UNet, or class ids (batch,) of a class-conditional one; uncond None or scale 1
    means no guidance (one forward of the conditional half only)."""
    def as_input(c):  # hidden states in the network's dtype; class ids stay integers
        return c.to(unet.dtype) if c.is_floating_point() else c

    if uncond is None or guidance_scale == 1.0:
        return lambda x, t: unet(x.to(unet.dtype), t, **{key: as_input(cond)}).sample.to(x.dtype)
    both = as_input(torch.cat([uncond, cond]))

    def predict(x, t):
        out = unet(torch.cat([x, x]).to(unet.dtype), t, **{key: both}).sample.to(x.dtype)
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return predict


def autoguided_predictor(unet, guide, guidance_scale: float, scheduler_config: dict,
                         interval: tuple[float, float] = GUIDANCE_INTERVAL) -> Callable:
    """predict(x_t, t) with autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    itself"): out = guide + scale * (unet - guide), where `guide` is the same network earlier in its training. It
    steers an unconditional model away from what the weaker one also gets wrong (blobs, half-formed digits), as
    classifier-free guidance does for a conditional one. Only at noise levels inside `interval`, read from the training
    schedule `scheduler_config` (autoguidance.guidance_interval); elsewhere, and at scale 1 or with no guide, the plain
    unet. network_calls(t) says how many forwards a step costs to whoever counts them."""
    plain = unet_predictor(unet)
    if guide is None or guidance_scale == 1.0:
        return plain
    weak, guided = unet_predictor(guide), guidance_interval(scheduler_config, interval)

    def predict(x, t):
        if not guided(t):
            return plain(x, t)
        out_guide = weak(x, t)
        return out_guide + guidance_scale * (plain(x, t) - out_guide)

    predict.network_calls = lambda t: 2 if guided(t) else 1
    return predict


def class_predictor(unet, labels: list, names: list[str], guidance_scale: float) -> tuple[Callable, int]:
    """predict(x_t, t) for class labels (names or ids; "" is "no class"), guided against "no class" (the last class
    embedding); and the number of images."""
    from .classes import label_ids

    ids = torch.tensor(label_ids([str(c) for c in labels], names, "class_labels"), device=unet.device)
    null = torch.full_like(ids, len(names)) if guidance_scale != 1.0 else None
    return guided_predictor(unet, ids, null, guidance_scale, key="class_labels"), len(ids)


def class_names_of(unet, saved: list[str] | None) -> list[str] | None:
    """A class UNet's class names (as saved, else their ids); None for a UNet without class embeddings."""
    if not unet.config.get("num_class_embeds"):
        return None
    return saved or [str(k) for k in range(unet.config.num_class_embeds - 1)]


def sample_shape(unet) -> tuple[int, int, int]:
    """(channels, h, w) of what the UNet denoises."""
    size = unet.config.sample_size
    return (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def _pipeline_output(images_u8: torch.Tensor, output_type: str):
    """diffusers' ImagePipelineOutput of uint8 NCHW images: PIL images, or float NHWC in [0, 1] for "np"."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    images = images_u8.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return ImagePipelineOutput(images=images.astype(np.float32) / 255.0)
    return ImagePipelineOutput(images=[Image.fromarray(i[:, :, 0] if i.shape[2] == 1 else i) for i in images])


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
        from .latents import decode
        from .text import TextEncoder

        prompts = [p for p in ([prompt] if isinstance(prompt, str) else prompt) for _ in range(num_images_per_prompt)]
        encoder = TextEncoder(self.tokenizer, self.text_encoder, "pipeline")
        cond = encoder.encode(prompts)
        uncond = encoder.encode([negative_prompt or ""] * len(prompts)) if guidance_scale != 1.0 else None
        x = generate(guided_predictor(self.unet, cond, uncond, guidance_scale), self.scheduler, sample_shape(self.unet),
                     list(range(seed, seed + len(prompts))), num_inference_steps, self.device)
        return _pipeline_output(to_uint8(decode(self.vae, x) if self.vae is not None else x), output_type)


class ClassConditionalPipeline(DiffusionPipeline):
    """A UNet2DModel with class embeddings (`num_class_embeds` = classes + 1; the last is "no class"), sampled with
    classifier-free guidance: what `train_unconditional.py --class_conditional` writes, and what the default run
    writes with the images' own clusters as classes (class_prior: each cluster's training size).

        pipe = ClassConditionalPipeline.from_pretrained("ddpm-mnist-classes")
        images = pipe(class_labels=["7", "7", "3"]).images   # names (pipe.class_names) or ids
        images = pipe(num_images=4).images                   # a model with class_prior: classes drawn by it

    Image k comes from a generator seeded `seed + k` alone, as in sample.py; the saved scheduler is the training
    DDPM (swap it the diffusers way, e.g. `EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)`)."""

    def __init__(self, unet, scheduler, class_names: list[str] | None = None, class_prior: list[int] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=class_names, class_prior=class_prior)

    @property
    def class_names(self) -> list[str]:
        return class_names_of(self.unet, self.config.class_names)

    @torch.no_grad()
    def __call__(self, class_labels: int | str | list | None = None, num_images: int = 1,
                 guidance_scale: float = CLASS_GUIDANCE, num_inference_steps: int = 50, seed: int = 0,
                 output_type: str = "pil"):
        if class_labels is None:
            if not self.config.get("class_prior"):
                raise ValueError("class_labels: name the classes to draw (pipe.class_names); this model has no "
                                 "class_prior to draw them from.")
            class_labels = drawn_names(self.class_names, self.config.class_prior, list(range(seed, seed + num_images)))
        elif num_images != 1:
            raise ValueError("num_images: with class_labels, one image is drawn per label; pass one or the other.")
        labels = class_labels if isinstance(class_labels, list) else [class_labels]
        predict, n = class_predictor(self.unet, labels, self.class_names, guidance_scale)
        x = generate(predict, self.scheduler, sample_shape(self.unet), list(range(seed, seed + n)),
                     num_inference_steps, self.device)
        return _pipeline_output(to_uint8(x), output_type)


class LatentDiffusionPipeline(DiffusionPipeline):
    """A UNet2DModel in a frozen VAE's latent space (an AutoencoderKL, a VQModel, or difftrain's MockAutoencoder),
    unconditional or with class embeddings (class_names; sampled with classifier-free guidance): what
    `train_unconditional.py --vae_name_or_path VAE` writes (diffusers' LDMPipeline for an unconditional VQModel run).

        pipe = LatentDiffusionPipeline.from_pretrained("ddpm-latent")
        images = pipe(num_images=4).images                  # a class model: pipe(class_labels=["7", "3"])

    Image k comes from a generator seeded `seed + k` alone, as in sample.py; the saved scheduler is the training one."""

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, unet, scheduler, vae, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(class_names=class_names)

    @property
    def class_names(self) -> list[str] | None:
        return class_names_of(self.unet, self.config.class_names)

    @torch.no_grad()
    def __call__(self, class_labels: int | str | list | None = None, num_images: int = 1,
                 guidance_scale: float = CLASS_GUIDANCE, num_inference_steps: int = 50, seed: int = 0,
                 output_type: str = "pil"):
        if self.class_names is None:
            if class_labels is not None:
                raise ValueError("class_labels: this model is unconditional (no class embeddings).")
            predict = unet_predictor(self.unet)
        else:
            labels = ["all"] if class_labels is None else class_labels  # None: one image per class
            predict, num_images = class_predictor(self.unet, labels if isinstance(labels, list) else [labels],
                                                  self.class_names, guidance_scale)
        x = generate(predict, self.scheduler, sample_shape(self.unet), list(range(seed, seed + num_images)),
                     num_inference_steps, self.device)
        return _pipeline_output(to_uint8(latents.decode(self.vae, x)), output_type)
