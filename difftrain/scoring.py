"""Scoring generated images: streamed generation → Inception features (images are not kept), FID/KID against a
reference, prompt accuracy per class; the records evaluate.py and its sweep write, and their one-line summaries."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from . import metrics
from .classifier import Classifier, class_accuracy, predict
from .data.builtin import DIGIT_WORDS
from .data.images import choose_mode, open_image, resize_shorter_side
from .data.sources import IMAGE_EXTENSIONS
from .errors import UserError
from .loading import Model
from .sampling import build_scheduler, sample_images
from .utils import write_text_atomic

CHUNK = 500  # images generated before their features are taken: bounds the images held at once
NOT_SAMPLES = {"grid.png", "comparison.png", "sweep.png"}  # what sample.py/evaluate.py write beside the images


# ----------------------------------------------------------------------------------------------
# Prompts and sizes


def class_prompts(templates: list[str], labels: list[str] | None = None) -> list[str]:
    """Prompts for classes 0..9 under each template, template-major: prompt p names class p mod 10, so image k
    (which gets prompt k mod P) shows class k mod 10."""
    labels = labels or [str(d) for d in range(10)]
    try:
        return [t.format(digit=k, word=DIGIT_WORDS[k] if k < 10 else labels[k], label=labels[k])
                for t in templates for k in range(len(labels))]
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"--prompt_template: {e!r} in {templates}; use the fields {{digit}}, {{word}} and "
                        "{label}.") from None


def match_resolution(images_u8: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 NCHW → resolution×resolution (shorter side, bilinear, centre crop: what the reference went through)."""
    if images_u8.shape[-2:] == (resolution, resolution):
        return images_u8
    mode = "L" if images_u8.shape[1] == 1 else "RGB"
    out = [resize_shorter_side(Image.fromarray(im[0] if mode == "L" else im.transpose(1, 2, 0)), resolution, mode,
                               True) for im in images_u8]
    return np.stack(out).transpose(0, 3, 1, 2)


def note_resize(what: str, size, resolution: int) -> None:
    print(f"note: {what} are {size[0]}x{size[1]}, the reference is at {resolution}x{resolution}; resizing them to "
          f"{resolution}x{resolution} (shorter side, bilinear, centre crop) before scoring.")


# ----------------------------------------------------------------------------------------------
# Reading samples made elsewhere


def _npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path) as f:
            images = f["images"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--samples_dir {path}: not an npz with an 'images' array ({e}); write one with "
                        "sample.py --output_type npz.") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise UserError(f"--samples_dir {path}: 'images' is {images.dtype} {images.shape}; expected uint8 NHWC "
                        "with 1 or 3 channels.")
    return images.transpose(0, 3, 1, 2)


def read_samples(path: str, limit: int) -> tuple[Iterator[np.ndarray], int, tuple[int, int]]:
    """(uint8 NCHW chunks, count, first image's size) of a folder of images or an npz (or a folder with
    samples.npz). Images of another size than the first are resized to it (and a note says so)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        images = _npz_images(p)[:limit]
        return (images[k : k + CHUNK] for k in range(0, len(images), CHUNK)), len(images), images.shape[-2:]
    if not p.is_dir():
        raise UserError(f"--samples_dir {path}: no such folder or .npz file.")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.name not in NOT_SAMPLES)
    if not files and (p / "samples.npz").is_file():
        return read_samples(str(p / "samples.npz"), limit)
    if not files:
        raise UserError(f"--samples_dir {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) and no "
                        "samples.npz.")
    files = files[:limit]
    first = open_image({"path": str(files[0]), "bytes": None})
    mode, size = choose_mode(first, "auto"), (first.height, first.width)

    def chunks():
        noted = False
        for k in range(0, len(files), CHUNK):
            arrays = []
            for f in files[k : k + CHUNK]:
                image = open_image({"path": str(f), "bytes": None}).convert(mode)
                if (image.height, image.width) != size:
                    if not noted:
                        print(f"note: {f.name} is {image.width}x{image.height}, the first image {size[1]}x{size[0]};"
                              f" resizing such images to {size[1]}x{size[0]}.")
                        noted = True
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(image, np.uint8)
                arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            yield np.stack(arrays)

    return chunks(), len(files), size


# ----------------------------------------------------------------------------------------------
# Generating and scoring


@dataclasses.dataclass
class Run:
    """One scheduler at one step count: its statistics and what it cost."""

    scheduler: str
    scheduler_class: str
    steps: int
    calls_per_image: int
    stats: metrics.Stats
    sampling_seconds: float
    feature_seconds: float
    predicted: np.ndarray | None  # classifier's reading of each image (text-conditional models with --classifier)


def generate_and_measure(model: Model, name: str, cfg, *, resolution: int, device, prompts: list[str],
                         classifier: Classifier | None) -> Run:
    """cfg.num_samples images from seeds cfg.seed + k, CHUNK at a time through sampling.sample_images; each chunk
    is resized to the reference resolution when needed, read by the classifier, turned into Inception features
    and dropped."""
    scheduler, step_kwargs = build_scheduler(name, model, cfg)
    n, sampled, calls, predicted, noted = cfg.num_samples, [0.0], [0], [], [False]

    def chunks():
        for first in range(0, n, CHUNK):
            seeds = [cfg.seed + k for k in range(first, min(n, first + CHUNK))]
            shift = first % len(prompts) if prompts else 0  # keep image k on prompt k mod P across chunks
            result = sample_images(model, scheduler, seeds, steps=cfg.num_inference_steps, batch_size=cfg.batch_size,
                                   step_kwargs=step_kwargs, prompts=prompts[shift:] + prompts[:shift],
                                   negative_prompt=cfg.negative_prompt, guidance_scale=cfg.guidance_scale,
                                   device=device, desc=f"{name} {cfg.num_inference_steps} steps "
                                   f"[{first + len(seeds)}/{n}]")
            sampled[0] += result.seconds
            calls[0] = result.calls_per_image
            images = result.images.numpy()
            if classifier is not None:
                predicted.append(predict(classifier, images))
            if images.shape[-2:] != (resolution, resolution) and not noted[0]:
                note_resize("generated images", images.shape[-2:], resolution)
                noted[0] = True
            yield match_resolution(images, resolution)

    start = time.perf_counter()
    stats = metrics.generated_stats(chunks(), device=device, batch_size=cfg.feature_batch_size, total=n,
                                    desc="Inception features")
    total = time.perf_counter() - start
    return Run(name, type(scheduler).__name__, cfg.num_inference_steps, calls[0], stats, sampled[0],
               total - sampled[0], np.concatenate(predicted) if predicted else None)


def scores(run_stats: metrics.Stats, ref: metrics.Stats, cfg) -> dict:
    subset = metrics.kid_subset_size(run_stats.n, ref.n, cfg.kid_subset_size)
    kid_mean, kid_std = metrics.kid(run_stats, ref, subset_size=subset, num_subsets=cfg.kid_subsets)
    return {"fid": metrics.fid(run_stats, ref), "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": subset,
            "kid_subsets": cfg.kid_subsets}


def write_json(path: Path, data: dict) -> None:
    """Written beside and renamed: a run killed mid-write leaves the previous file as it was."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def run_record(run: Run, ref: metrics.Stats, cfg, prompts: list[str], classifier: Classifier | None) -> dict:
    n = run.stats.n
    record = {**scores(run.stats, ref, cfg), "num_samples": n, "scheduler": run.scheduler,
              "scheduler_class": run.scheduler_class, "num_inference_steps": run.steps,
              "network_calls_per_image": run.calls_per_image, "seed": cfg.seed,
              "seconds": {"sampling": round(run.sampling_seconds, 2), "features": round(run.feature_seconds, 2)},
              "sampling_seconds_per_image": round(run.sampling_seconds / n, 5)}
    if prompts:
        record["prompts"] = prompts
    if classifier is not None:
        expected = np.arange(n) % len(classifier.labels)  # image k was made from a prompt for class k mod 10
        record["prompt_accuracy"] = class_accuracy(run.predicted, expected, classifier.labels)
        record["classifier"] = cfg.classifier
    return record


def summary_line(r: dict) -> str:
    line = (f"FID {r['fid']:.2f}  KID {r['kid_mean']:.4f} ± {r['kid_std']:.4f}  ({r['num_samples']} images vs "
            f"{r['reference']['n']} reference")
    if "scheduler" in r:
        line += f", {r['scheduler']} {r['num_inference_steps']} steps"
    line += ")"
    if "prompt_accuracy" in r:
        line += f"  prompt accuracy {r['prompt_accuracy']['overall']:.3f}"
    return line
