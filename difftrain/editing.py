"""img2img and inpainting inputs of sample.py: --init_image (a file, or a folder: image k edits file k mod F) and
--mask_image (white = repaint), read at the model's size and channels and, for a latent model, encoded by its VAE;
--repaint_jumps (repaint.py); a Stable Diffusion inpainting UNet's masked-image input. The denoising itself is
pipelines.generate's (init, strength, mask, repaint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.images import to_model_range
from .data.sources import IMAGE_EXTENSIONS
from .errors import UserError
from .repaint import Resampling, check_steps

IMG2IMG_STRENGTH = 0.6  # --strength unset, img2img: keeps the layout, redraws the detail


@dataclass
class Edit:
    """What every image of a sample run starts from: row k of `init` (and of `mask`) for image k mod F."""

    init: torch.Tensor  # (F, *model.image_shape): pixels in [-1, 1], or a latent model's latents
    mask: torch.Tensor | None  # (1, 1, h, w) at the UNet's size: 1 = repaint, the rest blended back in after every
    # step; None: img2img only, or a masked-image UNet (it sees the mask in `unet_input` and is not blended)
    strength: float
    files: list[str]  # the init image of row k
    mask_file: str | None
    repaint: Resampling | None = None  # --repaint_jumps
    unet_input: torch.Tensor | None = None  # a masked-image UNet's extra channels, (F, 5, h, w): masked_image_input

    def inputs(self, indices) -> dict:
        """pipelines.generate's edit arguments for the images `indices`."""
        rows = [k % len(self.files) for k in indices]
        mask = self.mask.expand(len(rows), -1, -1, -1) if self.mask is not None else None
        return {"init": self.init[rows], "strength": self.strength, "mask": mask, "repaint": self.repaint}

    def unet_for(self, unet, indices):
        """The UNet as the predictors of the images `indices` call it."""
        if self.unet_input is None:
            return unet
        return MaskedImageUNet(unet, self.unet_input[[k % len(self.files) for k in indices]])

    def record(self, k: int) -> dict:
        """Image k's edit, for its metadata line and its regenerate command."""
        jumps = self.repaint.jumps if self.repaint else None
        return {"init_image": self.files[k % len(self.files)], "mask_image": self.mask_file, "strength": self.strength,
                "repaint_jumps": jumps, "repaint_jump_length": self.repaint.jump_length if self.repaint else None}


class MaskedImageUNet:
    """A Stable Diffusion inpainting UNet (in_channels 9 = 4 latents + 1 mask + 4 masked-image latents) called as any
    UNet: unet(x, t, **kwargs) with its mask and masked-image latents (`extra`, a row per image) put after x's
    channels, repeated for both halves of a classifier-free-guidance batch, as StableDiffusionInpaintPipeline does."""

    def __init__(self, unet, extra: torch.Tensor):
        self.unet, self.extra, self.dtype = unet, extra, unet.dtype

    def __call__(self, x: torch.Tensor, t, **kwargs):
        extra = self.extra.to(x.device, x.dtype).repeat(len(x) // len(self.extra), 1, 1, 1)
        return self.unet(torch.cat([x, extra], dim=1), t, **kwargs)


def masked_image_input(model, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A masked-image UNet's extra channels for `images` (F, C, H, W) in [-1, 1] and the pixel `mask` (1, 1, H, W),
    1 = repaint: as diffusers' prepare_mask_latents, the mask resized (nearest) to the latents' size, then the VAE
    latents of the image with the repainted part zeroed; encoded to the latent mean, not a sample, so no noise."""
    latent_mask = F.interpolate(mask, size=model.image_shape[1:]).expand(len(images), -1, -1, -1)
    return torch.cat([latent_mask, model.encode(images * (mask < 0.5))], dim=1)


def image_files(path: str, flag: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise UserError(f"{flag} {path}: the folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    raise UserError(f"{flag} {path}: no such file or folder.")


def read_image(path: Path, size: tuple[int, int], mode: str, flag: str, resample=Image.LANCZOS) -> np.ndarray:
    """HWC uint8 in `mode` at `size` (h, w), resized and centre-cropped when it differs (with a note); transparency on
    white."""
    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise UserError(f"{flag} {path}: not a readable image ({e.__class__.__name__}).") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    notes = []
    if img.size != (size[1], size[0]):  # as the training data: the shorter side fits, the rest is centre-cropped
        scale = max(size[1] / img.width, size[0] / img.height)
        w, h = max(size[1], round(img.width * scale)), max(size[0], round(img.height * scale))
        notes.append(f"resized from {img.width}x{img.height}" + (" and centre-cropped" if (w, h) != (size[1], size[0])
                                                               else "") + f" to {size[1]}x{size[0]}")
        left, top = (w - size[1]) // 2, (h - size[0]) // 2
        img = img.resize((w, h), resample).crop((left, top, left + size[1], top + size[0]))
    if img.mode != mode:
        notes.append(f"converted from {img.mode} to {mode}")
        img = img.convert(mode)
    if notes:
        print(f"note: {flag} {path.name}: {' and '.join(notes)} to fit the model.")
    array = np.asarray(img)
    return array[:, :, None] if array.ndim == 2 else array


def load_edit(cfg, model, device) -> Edit | None:
    """--init_image / --mask_image / --strength as an Edit (None without them); the misuses are one line each."""
    if cfg.init_image is None:
        if cfg.mask_image:
            raise UserError("--mask_image marks what to repaint in --init_image; pass --init_image too.")
        if cfg.strength is not None:
            raise UserError("--strength says how much of --init_image to redraw; pass --init_image or drop it.")
        return None
    strength = cfg.strength if cfg.strength is not None else 1.0 if cfg.mask_image else IMG2IMG_STRENGTH
    repaint = Resampling(cfg.repaint_jumps, cfg.repaint_jump_length) if cfg.repaint_jumps else None
    if repaint and model.masked_image_input:
        raise UserError("--repaint_jumps resamples around a blended-in known region; this inpainting UNet sees the "
                        "masked image instead and is not blended: drop --repaint_jumps.")
    if repaint:
        steps = cfg.num_inference_steps
        check_steps(steps if strength >= 1.0 else min(int(steps * strength), steps), repaint.jump_length)
    channels, h, w = model.pixel_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"--init_image: the model makes {channels}-channel images; img2img reads L or RGB images.")
    files = image_files(cfg.init_image, "--init_image")
    pixels = np.stack([read_image(f, (h, w), mode, "--init_image") for f in files])
    images = to_model_range(torch.from_numpy(pixels).permute(0, 3, 1, 2)).to(device)
    init = model.encode(images)
    mask = unet_input = None
    if cfg.mask_image:
        marked = read_image(image_files(cfg.mask_image, "--mask_image")[0], (h, w), "L", "--mask_image", Image.NEAREST)
        mask = torch.from_numpy(marked >= 128).permute(2, 0, 1)[None].float().to(device)
        if model.masked_image_input:
            unet_input, mask = masked_image_input(model, images, mask), None
        elif model.image_shape[1:] != (h, w):  # a latent model: a latent is repainted if any of its pixels is
            mask = F.adaptive_max_pool2d(mask, model.image_shape[1:])
    return Edit(init=init, mask=mask, strength=strength, files=[str(f) for f in files],
                mask_file=str(cfg.mask_image) if cfg.mask_image else None, repaint=repaint, unet_input=unet_input)
