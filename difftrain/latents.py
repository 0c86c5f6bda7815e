"""Latent space: a frozen AutoencoderKL or VQModel (or the parameter-free MockAutoencoder), images ↔ latents (× its
scaling_factor), and `--cache_latents`: each image's latent DISTRIBUTION (mean and log-variance; a point for the
deterministic VQModel and mock) encoded once and kept on disk, so a cached run still draws a fresh latent sample every
step, exactly as an uncached one does.
DenoisingSpace is what both recipes share: pixels or latents, as the run's UNet sees them."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import augment
from .data.images import to_model_range
from .errors import UserError
from .utils import cache_root, first_line, written_beside
from .models import check_resolution, downsampling_factor, module_fingerprint

MOCK = "mock"  # --vae_name_or_path mock: a MockAutoencoder instead of a trained VAE


class MockAutoencoder(ModelMixin, ConfigMixin):
    """A parameter-free stand-in for an AutoencoderKL, to build and debug the latent path without a trained VAE:
    encode = average-pool by `factor`, decode = nearest upsample by `factor` (so decode(encode(x)) is x's projection
    onto factor × factor blocks), channels unchanged, scaling_factor 1. Its config carries what difftrain and
    diffusers read of an AutoencoderKL's: in_channels, latent_channels, scaling_factor, shift_factor, and
    block_out_channels, whose length gives the downsampling 2**(len - 1). It saves and loads like any diffusers model
    (config.json and an empty weights file)."""

    @register_to_config
    def __init__(self, factor: int = 2, in_channels: int = 3, latent_channels: int | None = None,
                 block_out_channels: list[int] | None = None, scaling_factor: float = 1.0,
                 shift_factor: float | None = None):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"MockAutoencoder: factor must be a power of two (got {factor}).")
        # derived from factor and in_channels whatever config.json says: code written for AutoencoderKL reads them
        self.register_to_config(latent_channels=in_channels, block_out_channels=[in_channels] * factor.bit_length())
        # no weights, but a device and a dtype (.to() moves it, vae.dtype reads it) as a real VAE has
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        # diffusers writes no weights file for an empty state dict, but from_pretrained needs one: an empty one
        weights = Path(save_directory) / SAFETENSORS_WEIGHTS_NAME
        if not weights.exists():
            save_file({}, str(weights))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        dist = point_distribution(F.avg_pool2d(x, self.config.factor))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = F.interpolate(z, scale_factor=self.config.factor, mode="nearest")
        return DecoderOutput(sample=x) if return_dict else (x,)


def point_distribution(z: torch.Tensor) -> DiagonalGaussianDistribution:
    """A deterministic encoding as a distribution: log-variance -30 is DiagonalGaussianDistribution's floor (std
    e^-15), so its samples are z to 1e-6."""
    return DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -30.0)], 1))


def _saved_class(name_or_path: str, subfolder: str) -> str | None:
    config = Path(name_or_path) / subfolder / "config.json"
    try:
        return json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    except (OSError, ValueError):
        return None  # AutoencoderKL.from_pretrained names what is wrong with it


@contextmanager
def outside_zero_init():
    """Frozen models load whole under DeepSpeed ZeRO-3 (diffusers' train_text_to_image pattern): transformers creates
    a model inside deepspeed.zero.Init, which partitions its parameters across the ranks, whenever its global DeepSpeed
    config says ZeRO-3; only the trained UNet goes through deepspeed.initialize, so nothing would gather a frozen
    model's pieces for its forward. Accelerate's switch for this no longer clears that global (accelerate 1.15 sets it
    again whatever the flag), so it is cleared here too, and set back from the plugin afterwards."""
    from accelerate.state import AcceleratorState, is_initialized

    plugin = AcceleratorState().deepspeed_plugin if is_initialized() else None
    if plugin is None:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    with plugin.zero3_init_context_manager(enable=False):
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()


VAE_CLASSES = {"VQModel": VQModel, "MockAutoencoder": MockAutoencoder}  # by config.json's _class_name; else KL


def saved_vae(folder) -> Path | None:
    """A pipeline folder's VAE: its vae/, or vqvae/ (LDMPipeline's name); None when it has neither."""
    return next((Path(folder) / s for s in ("vae", "vqvae") if (Path(folder) / s / "config.json").is_file()), None)


def load_vae(name_or_path: str, *, flag: str = "--vae_name_or_path", revision: str | None = None):
    """An AutoencoderKL folder or Hub id, a VQModel folder, or a pipeline folder holding either (saved_vae); a saved
    MockAutoencoder as itself."""
    subfolder = getattr(saved_vae(name_or_path), "name", "")
    cls = VAE_CLASSES.get(_saved_class(name_or_path, subfolder), AutoencoderKL)
    try:
        with outside_zero_init():
            vae = cls.from_pretrained(name_or_path, subfolder=subfolder, revision=revision)
    except Exception as e:
        article = "an" if cls is AutoencoderKL else "a"
        raise UserError(f"{flag} {name_or_path}: cannot load {article} {cls.__name__} there ({first_line(e)}).") from None
    if isinstance(vae, VQModel):
        # LDM trains on a VQ model's latents unscaled (their variance is near 1), and diffusers' LDMPipeline decodes
        # latents / vqvae.config.scaling_factor (unscaled before diffusers 0.22): scaling_factor 1, saved with it,
        # makes every LDMPipeline agree with us. VQModel's default 0.18215 is Stable Diffusion's AutoencoderKL number,
        # wrong for VQ latents (diffusers issue 6725).
        vae.register_to_config(scaling_factor=1.0)
    return vae.eval().requires_grad_(False)


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae) -> int:
    """What the UNet denoises: a VQModel's latents are its codebook vectors' size (vq_embed_dim, if set)."""
    return vae.config.get("vq_embed_dim") or vae.config.latent_channels


def check_latent_resolution(resolution: int, vae, unet_config, model_cls) -> int:
    """The latent size; the resolution must be a multiple of VAE downsampling × UNet downsampling."""
    vf, uf = vae_factor(vae), downsampling_factor(unet_config, model_cls)
    if resolution % (vf * uf):
        fixed = max(vf * uf, round(resolution / (vf * uf)) * vf * uf)
        raise UserError(f"--resolution {resolution} is not a multiple of {vf * uf} (the VAE downsamples {vf}x, the "
                        f"UNet {uf}x more); use --resolution {fixed}.")
    return resolution // vf


def latents_from_distribution(vae_config, parameters: torch.Tensor) -> torch.Tensor:
    """A sample of the latent distribution (mean ‖ log-variance), in the UNet's units."""
    z = DiagonalGaussianDistribution(parameters.float()).sample()
    return (z - (vae_config.get("shift_factor") or 0.0)) * vae_config.scaling_factor


def _latent_distribution(vae, images: torch.Tensor) -> DiagonalGaussianDistribution:
    """A VQModel's encoding is its pre-quantisation latents (what LDM trains on; decode quantises them): a point."""
    encoded = vae.encode(images.to(vae.dtype))
    return point_distribution(encoded.latents) if isinstance(vae, VQModel) else encoded.latent_dist


@torch.no_grad()
def encode_distribution(vae, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] → the latent distribution's parameters (N, 2·latent channels, h, w)."""
    return _latent_distribution(vae, images).parameters


@torch.no_grad()
def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] → the latent distribution's mean in the UNet's units: a deterministic encoding, for img2img."""
    z = _latent_distribution(vae, images).mean.float()
    return (z - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """UNet-unit latents → images in [-1, 1] (float32)."""
    z = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
    return vae.decode(z.to(vae.dtype)).sample.float()


def latent_cache_root(cache_dir: str | None) -> Path:
    return cache_root(cache_dir, "difftrain-latents")


def center_crop(pixels: np.ndarray, resolution: int) -> np.ndarray:
    h, w = pixels.shape[-2:]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return pixels[..., top : top + resolution, left : left + resolution]


def cache_latents(vae, images, resolution: int, root: Path, *, flipped: bool, batch_size: int = 32) -> np.ndarray:
    """The latent distributions of every image (and of its mirror image when `flipped`), encoded once:
    a memory-mapped float32 array (N, 1 or 2, 2·C, h, w), stored under root/<vae, images, flip>."""
    key = hashlib.sha256(f"{module_fingerprint(vae)} {images._fingerprint} {resolution} {flipped}".encode())
    folder = Path(root) / key.hexdigest()[:24]
    if not (folder / "latents.npy").is_file():
        rows = []
        device = vae.device  # a MockAutoencoder has no parameters
        for first in tqdm(range(0, len(images), batch_size), desc="Encoding latents (once; cached)"):
            pixels = [center_crop(p, resolution) for p in images[first : first + batch_size]["pixels"]]
            x = to_model_range(torch.from_numpy(np.stack(pixels))).to(device)
            views = [x, x.flip(-1)] if flipped else [x]
            rows.append(torch.stack([encode_distribution(vae, v).float().cpu() for v in views], 1).numpy())
        with written_beside(folder, f".partial-{os.getpid()}") as partial:  # complete or absent
            partial.mkdir()
            np.save(partial / "latents.npy", np.concatenate(rows))
    return np.load(folder / "latents.npy", mmap_mode="r")


def vae_image_mode(vae, image_mode: str) -> str:
    """The image mode the data is decoded in: the VAE's (grayscale data into an RGB VAE is decoded as RGB); the
    channel-agnostic mock takes the data's."""
    if isinstance(vae, MockAutoencoder):
        return image_mode
    channels = vae.config.in_channels
    vae_mode = {1: "L", 3: "RGB"}.get(channels)
    if vae_mode is None:
        raise UserError(f"the VAE takes {channels}-channel images, but images are decoded as 1-channel (L) or "
                        "3-channel (RGB) only; pass a VAE with in_channels 1 or 3.")
    if image_mode not in ("auto", vae_mode):
        raise UserError(f"--image_mode {image_mode} gives {len(image_mode)}-channel images but the VAE "
                        f"takes {channels}; use --image_mode auto.")
    return vae_mode


class CachedLatents(torch.utils.data.Dataset):
    """Items {"latents": an image's cached distributions}: what a cached run trains on instead of its pixels."""

    def __init__(self, latents: np.ndarray):
        self.latents = latents

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": np.asarray(self.latents[i])}


class DenoisingSpace:
    """What a run's UNet denoises, shared by both recipes: pixels (vae None) or a frozen VAE's latents. The size and
    image mode that implies (checked before any data is read), the VAE on the device and the optional latent cache,
    a batch → the UNet's input, and samples → images."""

    def __init__(self, cfg, vae, unet_config, model_cls):
        self.cfg, self.vae, self.latents = cfg, vae, None
        if vae is None:
            check_resolution(cfg.resolution, unet_config, model_cls)
            self.size, self.image_mode = cfg.resolution, cfg.image_mode
        else:
            self.size = check_latent_resolution(cfg.resolution, vae, unet_config, model_cls)
            self.image_mode = vae_image_mode(vae, cfg.image_mode)

    def prepare(self, images, device, dtype) -> None:
        """Once the images are decoded: the VAE on the device in `dtype` and, with --cache_latents, every image's
        latent distribution encoded (rank 0 first: the others read its cache)."""
        if self.vae is None:
            return
        if isinstance(self.vae, MockAutoencoder):  # parameter-free and channel-agnostic: it takes the data's channels
            self.vae = MockAutoencoder(self.vae.config.factor, in_channels=images[0]["pixels"].shape[0]).eval()
        self.vae.to(device, dtype)
        cfg = self.cfg
        if cfg.cache_latents:
            if not cfg.center_crop and any(p.shape[-2:] != (cfg.resolution,) * 2 for p in images[:8]["pixels"]):
                warnings.warn("--cache_latents encodes the centre crop of non-square images (random crops would "
                              "need one latent per crop); pass --center_crop to say so.", stacklevel=1)
            self.latents = cache_latents(self.vae, images, cfg.resolution, latent_cache_root(cfg.cache_dir),
                                         flipped=cfg.random_flip)

    def channels(self, images) -> int:
        return latent_channels(self.vae) if self.vae is not None else images[0]["pixels"].shape[0]

    def training_scheduler(self, scheduler):
        """Latents are not in [-1, 1]: samplers must not clip them."""
        if self.vae is not None and scheduler.config.get("clip_sample"):
            return type(scheduler).from_config(scheduler.config, clip_sample=False)
        return scheduler

    def model_input(self, batch, device) -> torch.Tensor:
        """A batch ({"pixels"} or cached {"latents"}) → what the UNet denoises, augmented (--random_flip)."""
        vae = self.vae
        if self.latents is not None:  # cached distributions: (B, 1 or 2 views, 2C, h, w); view 1 is the mirror image
            params = batch["latents"].to(device)
            if params.shape[1] == 2:
                flip = (torch.rand(params.shape[0]) < 0.5).long().to(device)
                params = params[torch.arange(params.shape[0], device=device), flip]
            else:
                params = params[:, 0]
            return latents_from_distribution(vae.config, params)
        x = augment(batch["pixels"], self.cfg.resolution, random_flip=self.cfg.random_flip, device=device)
        return latents_from_distribution(vae.config, encode_distribution(vae, x)) if vae is not None else x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples → images in [-1, 1]."""
        return decode(self.vae, x) if self.vae is not None else x
