"""The evaluate command: FID and KID of a trained model's samples (scoring.py: streamed, features accumulate, images
do not) or of images made elsewhere, against a dataset split; prompt accuracy for text-conditional models; with
--sweep, every scheduler × steps (sweep.py)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics, references
from .classifier import load_classifier, prompt_accuracy
from .errors import UserError
from .inference_config import EvaluateConfig
from .loading import Model, load_model, resolve_guidance, resolve_steps
from .sampling import drawn_classes, package_versions
from .schedulers import default_scheduler
from .scoring import (
    class_prompts,
    generate_and_measure,
    match_resolution,
    note_resize,
    read_samples,
    run_record,
    scores,
    summary_line,
    write_json,
)
from .sweep import run_sweep, sweep_runs
from .utils import DTYPES, prepare_output_dir, resolve_device

__all__ = ["reference_stats", "generated_stats", "fid", "kid", "load_classifier", "prompt_accuracy",
           "class_prompts", "evaluate"]
reference_stats, generated_stats, fid, kid = (references.reference_stats, metrics.generated_stats, metrics.fid,
                                              metrics.kid)


def estimate_cpu_seconds(model: Model | None, cfg, *, images: int, steps: int, reference_images: int, device) -> float:
    """A rough wall-clock estimate from one timed Inception pass and one timed UNet call."""
    probe = np.zeros((2, 1, 32, 32), np.uint8)
    metrics.inception_features(probe[:1], device=device)  # load + warm up
    start = time.perf_counter()
    metrics.inception_features(probe, device=device)
    per_feature = (time.perf_counter() - start) / 2
    per_image = 0.0
    if model is not None:
        batch = min(cfg.batch_size, 8)
        x = torch.zeros(batch, *model.image_shape, device=device)
        kwargs = {}
        if model.conditional:
            kwargs[model.condition_key] = model.encode_prompts([""] * batch)
        with torch.no_grad():
            model.unet(x, torch.tensor(1, device=device), **kwargs)
            start = time.perf_counter()
            model.unet(x, torch.tensor(1, device=device), **kwargs)
        guided = 2 if model.guidable and cfg.guidance_scale != 1.0 else 1
        per_image = (time.perf_counter() - start) / batch * steps * guided
    return images * (per_feature + per_image) + reference_images * per_feature


def _print_estimate(seconds: float) -> None:
    print(f"CPU run: about {seconds / 60:.0f} min ({seconds:.0f} s) estimated, sampling and features. Inception at 299x299 is slow on a CPU; "
          "a GPU is much faster. Fewer --num_samples is quicker, but FID is biased upward for small sets.")


def reference_for(cfg, resolution: int, device) -> metrics.Stats:
    return references.reference_stats(cfg.dataset_name, cfg.split, resolution, cache_dir=cfg.cache_dir,
                                  ref_stats=cfg.ref_stats, dataset_config_name=cfg.dataset_config_name,
                                  image_column=cfg.image_column, num_samples=cfg.num_ref_samples, device=device,
                                  batch_size=cfg.feature_batch_size)


def _reference_images_to_compute(cfg, resolution: int) -> int:
    path = references.reference_stats_path(cfg.dataset_name, cfg.split, resolution, cache_dir=cfg.cache_dir,
                                        ref_stats=cfg.ref_stats, dataset_config_name=cfg.dataset_config_name,
                                        image_column=cfg.image_column, num_samples=cfg.num_ref_samples)
    if path.is_file():
        return 0
    from .data.sources import load_source

    # loading the source now also stops a wrong --split or --dataset_name before any sampling
    count = len(load_source(cfg.dataset_name, None, config_name=cfg.dataset_config_name, split=cfg.split,
                            cache_dir=cfg.cache_dir))
    return min(count, cfg.num_ref_samples or count)


# ----------------------------------------------------------------------------------------------
# The command


def evaluate(cfg) -> Path:
    """evaluate.py: metrics.json (and with --sweep, sweep.csv and sweep.png) in the output folder."""
    metrics.inception_weights_path()  # a missing weights package fails now, not after sampling
    device = resolve_device(cfg.device)
    if cfg.samples_dir:
        return evaluate_samples(cfg, device)
    model = load_model(cfg.model, use_ema=not cfg.no_ema, device=device, dtype=DTYPES[cfg.dtype], lora=cfg.lora,
                       lora_scale=cfg.lora_scale)
    if cfg.guidance_scale is not None and not model.guidable:
        raise UserError(f"--guidance_scale steers text- and class-conditional models and autoguided ones; {cfg.model} "
                        f"is unconditional with no guide_unet/ ({type(model.unet).__name__}); drop --guidance_scale.")
    if cfg.classifier and not model.conditional:
        raise UserError(f"--classifier scores text- and class-conditional models; {cfg.model} is unconditional "
                        f"({type(model.unet).__name__}); drop --classifier.")
    if model.conditional and model.encode_prompts is None:
        raise UserError(f"{cfg.model}: a text-conditional UNet without text_encoder/ and tokenizer/ beside it; "
                        "pass the text-to-image run's output_dir.")
    classifier = load_classifier(cfg.classifier, device=device) if cfg.classifier else None
    prompts = _conditions(cfg, model, classifier)
    resolution = cfg.resolution or model.pixel_shape[1]  # a latent model's images, not its latents
    runs = sweep_runs(cfg, model) if cfg.sweep else \
        [(name := cfg.scheduler or default_scheduler(model.scheduler_config),
          resolve_steps(model, cfg.num_inference_steps, name, cfg.eta))]
    asked = cfg.guidance_scale
    # resolved into a copy, so metrics.json records it and the caller's config stays as asked (a sweep: per run)
    cfg = dataclasses.replace(cfg, guidance_scale=resolve_guidance(model, asked, runs[0][0], cfg.eta),
                              num_inference_steps=runs[0][1])
    default_out = model.samples_dir.parent / "eval" / ("sweep" if cfg.sweep else f"{runs[0][0]}-{runs[0][1]}")
    out = prepare_output_dir(Path(cfg.output_dir) if cfg.output_dir else default_out)
    reference_images = _reference_images_to_compute(cfg, resolution)
    if device.type == "cpu":
        _print_estimate(estimate_cpu_seconds(model, cfg, images=cfg.num_samples * len(runs),
                                             steps=sum(s for _, s in runs) // len(runs),
                                             reference_images=reference_images, device=device))
    ref = reference_for(cfg, resolution, device)
    resolution = int(ref.meta.get("resolution", resolution)) if ref.meta else resolution
    common = {"model": cfg.model, "model_path": str(model.path), "weights": model.weights,
              "reference": {**(ref.meta or {}), "n": ref.n}, "resolution": resolution, "device": str(device),
              "preprocessing": metrics.PREPROCESSING, "versions": package_versions()}
    if not cfg.sweep:
        run = generate_and_measure(model, runs[0][0], cfg, resolution=resolution, device=device, prompts=prompts,
                                   classifier=classifier)
        result = {**run_record(run, ref, cfg, prompts, classifier), **common,
                  "guidance_scale": cfg.guidance_scale if model.guidable else None}
        write_json(out / "metrics.json", result)
        print(summary_line(result) + f" → {out / 'metrics.json'}")
        return out
    return run_sweep(dataclasses.replace(cfg, guidance_scale=asked), model, runs, out, ref, common, resolution=resolution, device=device, prompts=prompts,
                     classifier=classifier)


def _conditions(cfg, model: Model, classifier) -> list[str]:
    """Image k's prompt (text models) or class name (class models) is entry k mod P: class k mod 10 each way, so the
    classifier's reading of image k is compared with class k mod (its classes)."""
    if model.class_names is None:
        return class_prompts(cfg.prompt_template, classifier.labels if classifier else None) if model.conditional else []
    if cfg.prompt_template != EvaluateConfig().prompt_template:
        raise UserError(f"--prompt_template phrases prompts; {cfg.model} is class-conditional (its classes are "
                        "sampled in order); drop --prompt_template.")
    if model.class_prior:  # a pixel-cluster model: its clusters drawn as sample.py draws them; no class to score
        if classifier:
            raise UserError(f"--classifier scores the class each image was asked for; {cfg.model}'s classes are its "
                            "own pixel clusters, not the classifier's: drop --classifier.")
        return drawn_classes(model, [cfg.seed + k for k in range(cfg.num_samples)])
    if classifier and len(classifier.labels) != len(model.class_names):
        raise UserError(f"--classifier {cfg.classifier} reads {len(classifier.labels)} classes but {cfg.model} has "
                        f"{len(model.class_names)}; train one on the model's dataset (evaluate.py train-classifier).")
    return list(model.class_names)


def evaluate_samples(cfg, device) -> Path:
    """--samples_dir: score PNGs or an npz made elsewhere."""
    if cfg.classifier:
        raise UserError("--classifier needs to know each image's prompt, which evaluate.py knows only for images it "
                        "generates; drop --samples_dir (pass --model) or drop --classifier.")
    chunks, count, size = read_samples(cfg.samples_dir, cfg.num_samples)
    if count < 2:
        raise UserError(f"--samples_dir {cfg.samples_dir}: {count} image; FID and KID need at least 2.")
    resolution = cfg.resolution or min(size)
    p = Path(cfg.samples_dir)
    out = prepare_output_dir(Path(cfg.output_dir) if cfg.output_dir else (p if p.is_dir() else p.parent))
    reference_images = _reference_images_to_compute(cfg, resolution)
    if device.type == "cpu":
        _print_estimate(estimate_cpu_seconds(None, cfg, images=count, steps=0, reference_images=reference_images,
                                             device=device))
    ref = reference_for(cfg, resolution, device)
    resolution = int(ref.meta.get("resolution", resolution)) if ref.meta else resolution
    if tuple(size) != (resolution, resolution):
        note_resize("the samples", size, resolution)
    start = time.perf_counter()
    stats = metrics.generated_stats((match_resolution(c, resolution) for c in chunks), device=device,
                                    batch_size=cfg.feature_batch_size, total=count, desc="Inception features")
    result = {**scores(stats, ref, cfg), "num_samples": stats.n, "samples": cfg.samples_dir,
              "reference": {**(ref.meta or {}), "n": ref.n}, "resolution": resolution, "device": str(device),
              "seconds": {"features": round(time.perf_counter() - start, 2)}, "preprocessing": metrics.PREPROCESSING,
              "versions": package_versions()}
    write_json(out / "metrics.json", result)
    print(summary_line(result) + f" → {out / 'metrics.json'}")
    return out


