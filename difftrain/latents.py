"""Latent space: a frozen AutoencoderKL, images ↔ latents (× its scaling_factor), and `--cache_latents`:
each image's latent DISTRIBUTION (mean and log-variance) encoded once and kept on disk, so a cached run
still draws a fresh latent sample every step, exactly as an uncached one does."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm

from .data.images import to_model_range
from .errors import UserError
from .utils import cache_root, first_line, written_beside
from .models import downsampling_factor, module_fingerprint


def load_vae(name_or_path: str, *, flag: str = "--vae_name_or_path", revision: str | None = None) -> AutoencoderKL:
    """An AutoencoderKL folder or Hub id, or a pipeline folder holding vae/."""
    subfolder = "vae" if (Path(name_or_path) / "vae" / "config.json").is_file() else ""
    try:
        return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder, revision=revision).eval().requires_grad_(False)
    except Exception as e:
        raise UserError(f"{flag} {name_or_path}: cannot load an AutoencoderKL there ({first_line(e)}).") from None


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


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


@torch.no_grad()
def encode_distribution(vae, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] → the latent distribution's parameters (N, 2·latent_channels, h, w)."""
    return vae.encode(images.to(vae.dtype)).latent_dist.parameters


@torch.no_grad()
def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] → the latent distribution's mean in the UNet's units: a deterministic encoding, for img2img."""
    z = vae.encode(images.to(vae.dtype)).latent_dist.mean.float()
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
        device = next(vae.parameters()).device
        for first in tqdm(range(0, len(images), batch_size), desc="Encoding latents (once; cached)"):
            pixels = [center_crop(p, resolution) for p in images[first : first + batch_size]["pixels"]]
            x = to_model_range(torch.from_numpy(np.stack(pixels))).to(device)
            views = [x, x.flip(-1)] if flipped else [x]
            rows.append(torch.stack([encode_distribution(vae, v).float().cpu() for v in views], 1).numpy())
        with written_beside(folder, f".partial-{os.getpid()}") as partial:  # complete or absent
            partial.mkdir()
            np.save(partial / "latents.npy", np.concatenate(rows))
    return np.load(folder / "latents.npy", mmap_mode="r")
