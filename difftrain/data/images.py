"""Images: decoded and resized ONCE into a cached 🤗 dataset of raw uint8 pixels; cropping, flipping and
scaling to [-1, 1] happen on the batch, on the training device, from the global (checkpointed) RNG."""

from __future__ import annotations

import io
import warnings
from functools import partial

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "P;L"}
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # how PIL opens 16-bit grayscale PNG/TIFF
# diffusers' --image_interpolation_mode names (torchvision's InterpolationMode) → PIL filters; torchvision's
# "nearest" and "nearest_exact" are both PIL's NEAREST, which is the exact one
INTERPOLATION_MODES = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
                       "hamming": Image.HAMMING, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST,
                       "nearest_exact": Image.NEAREST}


def open_image(value) -> Image.Image:
    """A PIL image from what a dataset column holds: an undecoded {bytes, path}, a PIL image or an array."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, dict):
        name = value.get("path") or "<in-memory image>"
        try:
            img = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
            img.load()
            return img
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UserError(f"cannot read image {name} ({e.__class__.__name__}); remove or replace that file.") from None
    raise UserError(f"image column holds {type(value).__name__}, not images; choose another --image_column.")


def choose_mode(img: Image.Image, image_mode: str) -> str:
    if image_mode != "auto":
        return image_mode
    return "L" if img.mode in GRAY_MODES else "RGB"


def resize_shorter_side(img: Image.Image, resolution: int, mode: str, center_crop: bool,
                        interpolation: str = "bilinear", bits: int = 8) -> np.ndarray:
    """HWC uint8 (bits 8) or uint16 (bits 16, --preserve_input_precision): shorter side → `resolution` (with one of
    INTERPOLATION_MODES), centre-cropped if asked. A 16-bit grayscale image is rescaled to the output depth, never
    clipped (PIL's convert("L") clips it to 255). Without center_crop a non-square image keeps its long side; the
    batch takes a random crop."""
    top = 255 if bits == 8 else 65535
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    if img.mode in SIXTEEN_BIT:  # resized as float, then rounded: no precision lost before the last step
        img = Image.fromarray(np.asarray(img, dtype=np.float32) * (top / 65535))
    else:
        img = img.convert(mode)
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        img = img.resize(size, INTERPOLATION_MODES[interpolation])
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.clip(np.rint(arr), 0, top)
    elif bits == 16:
        arr = arr.astype(np.uint32) * 257  # 8-bit source: 255 → 65535
    arr = arr.astype(np.uint8 if bits == 8 else np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1 and mode == "RGB":
        arr = np.repeat(arr, 3, axis=2)
    if center_crop:
        top_row, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
        arr = arr[top_row : top_row + resolution, left : left + resolution]
    return np.ascontiguousarray(arr)


def prepare_images(ds, image_column: str, resolution: int, *, center_crop: bool, image_mode: str,
                   interpolation: str = "bilinear", bits: int = 8):
    """Decode + resize every image once (🤗 datasets caches the result beside the source) and return
    a dataset whose items are {"pixels": uint8 CHW array}."""
    import datasets

    if len(ds) == 0:
        raise UserError("the dataset is empty; check --dataset_name/--train_data_dir, --split and --max_train_samples.")
    ds = ds.cast_column(image_column, datasets.Image(decode=False)) if isinstance(
        ds.features[image_column], datasets.Image) else ds
    first = open_image(ds[0][image_column])
    factor = resolution / min(first.size)
    if factor > 4:  # an OOM an hour later is worse than a line now
        warnings.warn(f"--resolution {resolution} enlarges the images (the first is {first.width}x{first.height}) "
                      f"{factor:.0f}x on each side, {factor ** 2:.0f}x the pixels, memory and time per image.",
                      stacklevel=2)
    modes = image_modes(ds, image_column)
    # auto: the richest mode present, so one colour image among grayscale ones keeps the whole set in colour
    mode = image_mode if image_mode != "auto" else ("L" if modes <= GRAY_MODES else "RGB")
    if modes & ALPHA_MODES:
        warnings.warn(f"some images have an alpha channel ({', '.join(sorted(modes & ALPHA_MODES))}); they are "
                      "composited on white.", stacklevel=2)

    def decode_batch(batch):
        arrays = [resize_shorter_side(open_image(v), resolution, mode, center_crop, interpolation, bits)
                  for v in batch[image_column]]
        return {"pixels": [a.tobytes() for a in arrays], "shape": [list(a.shape) for a in arrays]}

    ds = ds.map(decode_batch, batched=True, batch_size=256, remove_columns=ds.column_names,
                desc=f"Decoding images at {resolution}px (once; cached)")
    return ds.with_transform(partial(_to_arrays, dtype=np.uint8 if bits == 8 else np.uint16))


def image_modes(ds, image_column: str) -> set[str]:
    """The PIL modes of every image, from their headers (cached by 🤗 datasets like the decoding)."""
    def peek(batch):
        return {"mode": [_peek_mode(v) for v in batch[image_column]]}

    found = ds.map(peek, batched=True, batch_size=1024, remove_columns=ds.column_names, desc="Reading image modes")
    return set(found.unique("mode"))


def _peek_mode(value) -> str:
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        try:
            with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as img:
                return "PA" if img.mode == "P" and "transparency" in img.info else img.mode
        except (UnidentifiedImageError, OSError, ValueError):
            pass  # decoding names the file
    img = open_image(value)
    return "PA" if img.mode == "P" and "transparency" in img.info else img.mode


def _to_arrays(batch, dtype=np.uint8):
    pixels = [np.frombuffer(b, dtype=dtype).reshape(shape).transpose(2, 0, 1)
              for b, shape in zip(batch["pixels"], batch["shape"])]
    return {**{k: v for k, v in batch.items() if k not in ("pixels", "shape")}, "pixels": pixels}


def collate(examples: list[dict]) -> dict:
    """Arrays (uint8 pixels, cached latents) stacked, or a list when sizes differ (the batch crop makes pixels
    equal); numbers as a tensor; anything else as a list."""
    batch = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if isinstance(values[0], (np.ndarray, list)) and key in ("pixels", "latents"):
            tensors = [torch.from_numpy(np.array(v)) for v in values]
            batch[key] = torch.stack(tensors) if all(t.shape == tensors[0].shape for t in tensors) else tensors
        else:
            batch[key] = torch.tensor(values) if isinstance(values[0], (int, float)) else values
    return batch


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or uint16, --preserve_input_precision) pixels → [-1, 1]."""
    return pixels.float() / (127.5 if pixels.dtype == torch.uint8 else 32767.5) - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 255] by (x + 1) * 127.5, rounded; out-of-range values saturate at the end only."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def augment(pixels, resolution: int, *, random_flip: bool, device=None) -> torch.Tensor:
    """uint8 batch (tensor or list of differently sized CHW tensors) → float [-1, 1] at `resolution`,
    random-cropped where larger and flipped at random, all from the global torch RNG."""
    if isinstance(pixels, torch.Tensor) and pixels.shape[-2:] == (resolution, resolution):
        batch = pixels
    else:
        crops = []
        for p in pixels:
            top = int(torch.randint(0, p.shape[-2] - resolution + 1, ()))
            left = int(torch.randint(0, p.shape[-1] - resolution + 1, ()))
            crops.append(p[..., top : top + resolution, left : left + resolution])
        batch = torch.stack(crops)
    batch = to_model_range(batch.to(device) if device is not None else batch)
    if random_flip:
        flip = torch.rand(batch.shape[0]) < 0.5
        batch = torch.where(flip.to(batch.device)[:, None, None, None], batch.flip(-1), batch)
    return batch
