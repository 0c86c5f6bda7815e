"""The sample command: a trained model (loading.py) generates images from
per-image seeds with any scheduler, and write PNGs (or one npz), a grid and metadata that regenerates any one image;
with --scheduler all, a comparison sheet (one row per scheduler, same seeds) and a CSV of timings."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import shlex
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .data.images import to_uint8
from .editing import Edit, load_edit
from .errors import UserError
from .loading import DEFAULT_STEPS, Model, load_model, resolve_guidance, resolve_steps
from .pipelines import autoguided_predictor, comparison_sheet, generate, guided_predictor, image_grid
from .repaint import check_scheduler as check_jump_scheduler
from .schedulers import (
    check_num_inference_steps,
    default_scheduler,
    describe_schedulers,
    sampling_options,
    scheduler_from_training_config,
    scheduler_table,
    step_options,
)
from .utils import DTYPES, prepare_output_dir, resolve_device

# ----------------------------------------------------------------------------------------------
# Prompts


def read_prompts(cfg) -> list[str]:
    prompts = list(cfg.prompt)
    if cfg.prompt_file:
        try:
            lines = Path(cfg.prompt_file).read_text().splitlines()
        except OSError as e:
            raise UserError(f"--prompt_file {cfg.prompt_file}: cannot read it ({e.strerror or e}).") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise UserError(f"--prompt_file {cfg.prompt_file} holds no prompts; write one prompt a line.")
    return prompts


def conditions(model: Model, cfg) -> list[str]:
    """What image k is conditioned on (entry k mod L): the prompts of a text model, the class names of a class
    model (--class_label; unset: every class in turn, or for a pixel-cluster model, clusters drawn by their sizes from
    each image's seed), nothing for an unconditional one; flags that do not fit the model are refused."""
    prompts = read_prompts(cfg)
    if model.class_names is None:
        if cfg.class_label:
            raise UserError(f"--class_label given, but {cfg.model} is not a class-conditional model; drop it"
                            f"{' (text models take --prompt)' if model.conditional else ''}.")
        check_conditioning(model, prompts, cfg)
        return prompts
    from .classes import label_ids

    flag = "--prompt/--prompt_file" if prompts else "--negative_prompt" if cfg.negative_prompt else None
    if flag:
        raise UserError(f"{flag} given, but {cfg.model} is a class-conditional model; pass --class_label NAME "
                        f"(its classes: {', '.join(model.class_names[:20])}) or --class_label all.")
    if not cfg.class_label and model.class_prior:
        return drawn_classes(model, [cfg.seed + k for k in range(cfg.num_images)])
    return [model.class_names[k] for k in label_ids(cfg.class_label or ["all"], model.class_names)]


def drawn_classes(model: Model, seeds: list[int]) -> list[str]:
    """A pixel-cluster model's class for each seed, drawn by the clusters' training sizes (clusters.draw_clusters)."""
    from .clusters import drawn_names

    return drawn_names(model.class_names, model.class_prior, seeds)


def check_conditioning(model: Model, prompts: list[str], cfg) -> None:
    """Prompts go with text-conditional models only, and those need prompts."""
    name = type(model.unet).__name__
    guidance = cfg.guidance_scale is not None and not model.guidable
    if not model.conditional and (prompts or cfg.negative_prompt or guidance):
        flag = ("--prompt/--prompt_file" if prompts else "--negative_prompt" if cfg.negative_prompt
                else "--guidance_scale")
        raise UserError(f"{flag} given, but {cfg.model} is an unconditional model ({name}); drop {flag}.")
    if model.conditional and not prompts:
        raise UserError(f"{cfg.model} is a text-conditional model ({name}); pass --prompt TEXT or --prompt_file FILE.")
    if model.conditional and model.encode_prompts is None:
        raise UserError(f"{cfg.model}: a text-conditional UNet without text_encoder/ and tokenizer/ beside it; "
                        "pass the text-to-image run's output_dir.")


# ----------------------------------------------------------------------------------------------
# Generation


def _predictor(model: Model, indices: range, prompts: list[str], negative_prompt: str | None,
               guidance_scale: float, edit: Edit | None = None) -> Callable:
    """predict(x_t, t) for the images `indices` (image k gets prompt k mod P; an inpainting UNet, its masked image)."""
    unet = edit.unet_for(model.unet, indices) if edit else model.unet
    if not model.conditional:
        return autoguided_predictor(unet, model.guide, guidance_scale, model.scheduler_config)
    cond = model.encode_prompts([prompts[k % len(prompts)] for k in indices])
    uncond = model.encode_prompts([negative_prompt or ""] * len(indices)) if guidance_scale != 1.0 else None
    return guided_predictor(unet, cond, uncond, guidance_scale, key=model.condition_key)


@dataclass
class Samples:
    images: torch.Tensor  # uint8 NCHW
    seconds: float
    calls_per_image: int  # network evaluations per trajectory (a CFG forward counts once)


def sample_images(model: Model, scheduler, seeds: list[int], *, steps: int, batch_size: int, step_kwargs: dict,
                  prompts: list[str], negative_prompt: str | None, guidance_scale: float, device,
                  desc: str = "sample", edit: Edit | None = None) -> Samples:
    """All images, batch by batch, with a progress bar over images. Image k comes from seeds[k] alone (and, with an
    edit, from its init image k mod F)."""
    calls = 0

    def counted(predict):
        def call(x, t):
            nonlocal calls
            calls += predict.network_calls(t) if hasattr(predict, "network_calls") else 1  # autoguidance: 1 or 2
            return predict(x, t)

        return call

    batches, start = [], time.perf_counter()
    with tqdm(total=len(seeds), unit="img", desc=desc) as bar:
        for first in range(0, len(seeds), batch_size):
            batch = seeds[first : first + batch_size]
            indices = range(first, first + len(batch))
            predict = counted(_predictor(model, indices, prompts, negative_prompt, guidance_scale, edit))
            x = generate(predict, scheduler, model.image_shape, batch, steps, device, torch.float32,
                         **(edit.inputs(indices) if edit else {}), **step_kwargs)
            batches.append(to_uint8(model.decode(x)).cpu())  # .cpu() waits for the device, so the clock is honest
            bar.update(len(batch))
    n_batches = -(-len(seeds) // batch_size)
    return Samples(torch.cat(batches), time.perf_counter() - start, calls // n_batches)


def build_scheduler(name: str, model: Model, cfg, *, strict: bool = True):
    """The named scheduler from the model's training config with the command's overrides; and its step kwargs."""
    check_num_inference_steps(name, model.scheduler_config, cfg.num_inference_steps)
    scheduler = scheduler_from_training_config(
        name, model.scheduler_config, timestep_spacing=cfg.timestep_spacing,
        use_karras_sigmas=cfg.use_karras_sigmas, clip_sample=cfg.clip_sample, thresholding=cfg.thresholding,
    )
    if getattr(cfg, "repaint_jumps", 0):  # evaluate.py has no jumps
        check_jump_scheduler(name, scheduler)
    return scheduler, step_options(scheduler, eta=cfg.eta, strict=strict)


# ----------------------------------------------------------------------------------------------
# Writing


def write_images(out: Path, images_u8: torch.Tensor, output_type: str, seeds: list[int]) -> list[str]:
    """PNGs 00000.png... or one samples.npz (images: uint8 NHWC, seeds); returns each image's file name."""
    nhwc = images_u8.permute(0, 2, 3, 1).numpy()
    if output_type == "npz":
        np.savez(out / "samples.npz", images=nhwc, seeds=np.asarray(seeds, dtype=np.int64))
        return ["samples.npz"] * len(nhwc)
    names = [f"{k:05d}.png" for k in range(len(nhwc))]
    for name, img in zip(names, nhwc):
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(out / name)
    return names


def package_versions() -> dict:
    versions = {"difftrain": __version__}
    for name in ("diffusers", "torch", "transformers", "accelerate", "numpy", "pillow", "torchsde"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[name] = importlib_metadata.version(name)
    return versions


def regenerate_command(cfg, scheduler_name: str, seed: int, prompt: str | None, flag: str = "prompt",
                       edit: dict | None = None, autoguided: bool = False) -> str:
    """The sample.py command line that makes this one image again (as image 0 of a one-image run)."""
    args = ["python", "sample.py", "--model", cfg.model, "--scheduler", scheduler_name,
            "--num_inference_steps", cfg.num_inference_steps, "--seed", seed, "--num_images", 1]
    optional = {"no_ema": cfg.no_ema or None, "eta": cfg.eta or None, "timestep_spacing": cfg.timestep_spacing,
                "use_karras_sigmas": cfg.use_karras_sigmas, "clip_sample": cfg.clip_sample,
                "thresholding": cfg.thresholding, "dtype": None if cfg.dtype == "fp32" else cfg.dtype,
                flag: prompt, "negative_prompt": cfg.negative_prompt if prompt else None,
                "guidance_scale": cfg.guidance_scale if prompt or autoguided else None, "lora": cfg.lora,
                "lora_scale": cfg.lora_scale if cfg.lora and cfg.lora_scale != 1.0 else None, **(edit or {})}
    for key, value in optional.items():
        if value is not None:
            args += [f"--{key}", str(value).lower() if isinstance(value, bool) else value]
    return shlex.join(str(a) for a in args)


def metadata_records(cfg, model: Model, scheduler_name: str, scheduler, files: list[str], seeds: list[int],
                     prompts: list[str], device, edit: Edit | None = None) -> list[dict]:
    """One JSON line per image: enough to regenerate it exactly."""
    versions = package_versions()
    options = sampling_options(scheduler)
    records = []
    flag = "class_label" if model.class_names is not None else "prompt"
    autoguided = model.guide is not None
    for k, (file, seed) in enumerate(zip(files, seeds)):
        prompt = prompts[k % len(prompts)] if prompts else None
        edited = edit.record(k) if edit else None
        records.append({**(edited or {}),
            "file": file, "index": k, "seed": seed, "scheduler": scheduler_name,
            "scheduler_class": type(scheduler).__name__, "steps": cfg.num_inference_steps, "eta": cfg.eta,
            "scheduler_options": options, "guidance_scale": cfg.guidance_scale if prompt or autoguided else None,
            flag: prompt, "negative_prompt": cfg.negative_prompt if prompt else None,
            "model": cfg.model, "model_path": str(model.path), "weights": model.weights, "dtype": cfg.dtype,
            "device": str(device), "versions": versions,
            "command": regenerate_command(cfg, scheduler_name, seed, prompt, flag, edited, autoguided),
        })
    return records


# ----------------------------------------------------------------------------------------------
# The command


def sample(cfg) -> Path | None:
    """sample.py: images, grid and metadata from one scheduler; or a comparison sheet with --scheduler all."""
    if cfg.list_schedulers:
        print(describe_schedulers())
        return None
    read_prompts(cfg)  # an unreadable --prompt_file fails before the model loads
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, use_ema=not cfg.no_ema, device=device, dtype=DTYPES[cfg.dtype], lora=cfg.lora,
                       lora_scale=cfg.lora_scale, inpainting=cfg.mask_image is not None)
    prompts = conditions(model, cfg)
    # what the model resolves goes into a copy (metadata and regenerate commands record it); the caller's stays as asked
    if cfg.scheduler == "all":  # every scheduler at the same steps
        cfg = dataclasses.replace(cfg, num_inference_steps=cfg.num_inference_steps or DEFAULT_STEPS)
    else:
        name = cfg.scheduler or default_scheduler(model.scheduler_config)
        cfg = dataclasses.replace(cfg, scheduler=name,
                                  num_inference_steps=resolve_steps(model, cfg.num_inference_steps, name, cfg.eta),
                                  guidance_scale=resolve_guidance(model, cfg.guidance_scale, name, cfg.eta))
    edit = load_edit(cfg, model, device)
    if cfg.scheduler == "all":
        return compare_schedulers(cfg, model, prompts, device, edit)
    scheduler, step_kwargs = build_scheduler(cfg.scheduler, model, cfg)
    out = prepare_output_dir(Path(cfg.output_dir) if cfg.output_dir else
                             model.samples_dir / f"{cfg.scheduler}-{cfg.num_inference_steps}")
    seeds = [cfg.seed + k for k in range(cfg.num_images)]
    result = sample_images(model, scheduler, seeds, steps=cfg.num_inference_steps, batch_size=cfg.batch_size,
                           step_kwargs=step_kwargs, prompts=prompts, negative_prompt=cfg.negative_prompt,
                           guidance_scale=cfg.guidance_scale, device=device, desc=cfg.scheduler, edit=edit)
    files = write_images(out, result.images, cfg.output_type, seeds)
    image_grid(result.images).save(out / "grid.png")
    scheduler.save_config(str(out))  # scheduler_config.json: the exact sampler, overrides resolved
    records = metadata_records(cfg, model, cfg.scheduler, scheduler, files, seeds, prompts, device, edit)
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(seeds)} images in {result.seconds:.1f} s ({result.seconds / len(seeds):.3f} s/image) → {out}")
    return out


def compare_schedulers(cfg, model: Model, prompts: list[str], device, edit: Edit | None = None) -> Path:
    """Every scheduler of the model's family on the same seeds: comparison.png (one labelled row each) and
    timings.csv. A scheduler that cannot run here (missing package, unsupported option) gets a row saying why."""
    out = prepare_output_dir(Path(cfg.output_dir) if cfg.output_dir else
                             model.samples_dir / f"all-{cfg.num_inference_steps}")
    seeds = [cfg.seed + k for k in range(cfg.num_images)]
    # one forward first, so the first scheduler's time does not include the network's warm-up
    _predictor(model, range(1), prompts, cfg.negative_prompt, 1.0, edit)(
        torch.zeros(1, *model.image_shape, device=device), torch.tensor(1, device=device))
    rows, timings = [], []
    for name in scheduler_table(model.scheduler_config):
        try:
            scheduler, step_kwargs = build_scheduler(name, model, cfg, strict=False)
        except UserError as e:
            rows.append((f"{name}: skipped (see timings.csv)", None))
            timings.append({"scheduler": name, "status": f"skipped: {e}"})
            continue
        guidance = resolve_guidance(model, cfg.guidance_scale, name, cfg.eta)  # autoguidance: stochastic ones only
        result = sample_images(model, scheduler, seeds, steps=cfg.num_inference_steps, batch_size=cfg.batch_size,
                               step_kwargs=step_kwargs, prompts=prompts, negative_prompt=cfg.negative_prompt,
                               guidance_scale=guidance, device=device, desc=name, edit=edit)
        per_image = result.seconds / len(seeds)
        calls = "" if result.calls_per_image == cfg.num_inference_steps else f" ({result.calls_per_image} calls)"
        shown = f", guidance {guidance:g}" if model.guidable else ""
        rows.append((f"{name}  {cfg.num_inference_steps} steps{calls}{shown}  {per_image:.3f} s/img", result.images))
        timings.append({"scheduler": name, "class": type(scheduler).__name__, "steps": cfg.num_inference_steps,
                        "guidance_scale": guidance if model.guidable else None,
                        "network_calls": result.calls_per_image, "images": len(seeds),
                        "seconds": round(result.seconds, 4), "seconds_per_image": round(per_image, 5), "status": "ok"})
    comparison_sheet(rows).save(out / "comparison.png")
    with open(out / "timings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["scheduler", "class", "steps", "guidance_scale", "network_calls", "images", "seconds",
                                    "seconds_per_image", "status"])
        writer.writeheader()
        writer.writerows(timings)
    print(f"{len(rows)} schedulers × {len(seeds)} images → {out / 'comparison.png'}, {out / 'timings.csv'}")
    return out
