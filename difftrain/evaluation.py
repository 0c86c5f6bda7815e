"""The evaluate command: FID and KID of a trained model's samples (generated through difftrain.sampling, streamed:
features accumulate, images do not) or of images made elsewhere, against a dataset split; prompt accuracy for
text-conditional models; a sweep of schedulers × steps with a CSV and a plot of FID against network calls."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from . import metrics
from .classifier import Classifier, class_accuracy, load_classifier, predict, prompt_accuracy
from .data.builtin import DIGIT_WORDS
from .data.images import choose_mode, open_image, resize_shorter_side
from .data.sources import IMAGE_EXTENSIONS
from .errors import UserError
from .loading import Model, load_model, resolve_guidance
from .sampling import build_scheduler, package_versions, sample_images
from .plots import plot_fid_vs_nfe
from .schedulers import default_scheduler, scheduler_table
from .utils import DTYPES, prepare_output_dir, resolve_device, write_text_atomic

CHUNK = 500  # images generated before their features are taken: bounds the images held at once
NOT_SAMPLES = {"grid.png", "comparison.png", "sweep.png"}  # what sample.py/evaluate.py write beside the images

__all__ = ["reference_stats", "generated_stats", "fid", "kid", "load_classifier", "prompt_accuracy",
           "class_prompts", "evaluate"]
reference_stats, generated_stats, fid, kid = (metrics.reference_stats, metrics.generated_stats, metrics.fid,
                                              metrics.kid)


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


def _note_resize(what: str, size, resolution: int) -> None:
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
                _note_resize("generated images", images.shape[-2:], resolution)
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
            kwargs["encoder_hidden_states"] = model.encode_prompts(["a"] * batch)
        with torch.no_grad():
            model.unet(x, torch.tensor(1, device=device), **kwargs)
            start = time.perf_counter()
            model.unet(x, torch.tensor(1, device=device), **kwargs)
        guided = 2 if model.conditional and cfg.guidance_scale != 1.0 else 1
        per_image = (time.perf_counter() - start) / batch * steps * guided
    return images * (per_feature + per_image) + reference_images * per_feature


def _print_estimate(seconds: float) -> None:
    print(f"CPU run: about {seconds / 60:.0f} min ({seconds:.0f} s) estimated, sampling and features. Inception at 299x299 is slow on a CPU; "
          "a GPU is much faster. Fewer --num_samples is quicker, but FID is biased upward for small sets.")


def reference_for(cfg, resolution: int, device) -> metrics.Stats:
    return metrics.reference_stats(cfg.dataset_name, cfg.split, resolution, cache_dir=cfg.cache_dir,
                                  ref_stats=cfg.ref_stats, dataset_config_name=cfg.dataset_config_name,
                                  image_column=cfg.image_column, num_samples=cfg.num_ref_samples, device=device,
                                  batch_size=cfg.feature_batch_size)


def _reference_images_to_compute(cfg, resolution: int) -> int:
    path = metrics.reference_stats_path(cfg.dataset_name, cfg.split, resolution, cache_dir=cfg.cache_dir,
                                        ref_stats=cfg.ref_stats, dataset_config_name=cfg.dataset_config_name,
                                        image_column=cfg.image_column, num_samples=cfg.num_ref_samples)
    if path.is_file():
        return 0
    from .data.sources import load_source

    # loading the source now also stops a wrong --split or --dataset_name before any sampling
    count = len(load_source(cfg.dataset_name, None, config_name=cfg.dataset_config_name, split=cfg.split,
                            cache_dir=cfg.cache_dir))
    return min(count, cfg.num_ref_samples or count)


def write_json(path: Path, data: dict) -> None:
    """Written beside and renamed: a run killed mid-write leaves the previous file as it was."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# The command


def evaluate(cfg) -> Path:
    """evaluate.py: metrics.json (and with --sweep, sweep.csv and sweep.png) in the output folder."""
    metrics.inception_weights_path()  # a missing weights package fails now, not after sampling
    device = resolve_device(cfg.device)
    if cfg.samples_dir:
        return evaluate_samples(cfg, device)
    model = load_model(cfg.model, use_ema=not cfg.no_ema, device=device, dtype=DTYPES[cfg.dtype])
    cfg.guidance_scale = resolve_guidance(model, cfg.guidance_scale)  # resolved, so metrics.json records it
    if cfg.classifier and not model.conditional:
        raise UserError(f"--classifier scores text-conditional models; {cfg.model} is unconditional "
                        f"({type(model.unet).__name__}); drop --classifier.")
    if model.conditional and model.encode_prompts is None:
        raise UserError(f"{cfg.model}: a text-conditional UNet without text_encoder/ and tokenizer/ beside it; "
                        "pass the text-to-image run's output_dir.")
    classifier = load_classifier(cfg.classifier, device=device) if cfg.classifier else None
    prompts = class_prompts(cfg.prompt_template, classifier.labels if classifier else None) \
        if model.conditional else []
    resolution = cfg.resolution or model.image_shape[1]
    runs = sweep_runs(cfg, model) if cfg.sweep else \
        [(cfg.scheduler or default_scheduler(model.scheduler_config), cfg.num_inference_steps)]
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
        result = {**run_record(run, ref, cfg, prompts, classifier), **common}
        write_json(out / "metrics.json", result)
        print(summary_line(result) + f" → {out / 'metrics.json'}")
        return out
    return run_sweep(cfg, model, runs, out, ref, common, resolution=resolution, device=device, prompts=prompts,
                     classifier=classifier)


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
        _note_resize("the samples", size, resolution)
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


# ----------------------------------------------------------------------------------------------
# Sweep


def sweep_runs(cfg, model: Model) -> list[tuple[str, int]]:
    """(scheduler, steps) pairs: --sweep_schedulers × --sweep_steps, then --sweep_extra name:steps."""
    runs = [(name, steps) for name in cfg.sweep_schedulers for steps in cfg.sweep_steps]
    for extra in cfg.sweep_extra:
        name, _, steps = extra.partition(":")
        if not steps.isdigit() or int(steps) < 1:
            raise UserError(f"--sweep_extra {extra}: write scheduler:steps, e.g. ddpm:1000.")
        runs.append((name, int(steps)))
    table = scheduler_table(model.scheduler_config)
    unknown = sorted({name for name, _ in runs if name not in table})
    if unknown:
        raise UserError(f"--sweep: unknown scheduler(s) {', '.join(unknown)} for this model; choose from "
                        f"{', '.join(table)}.")
    return runs


SWEEP_COLUMNS = ["scheduler", "steps", "network_calls", "fid", "kid_mean", "kid_std", "num_samples",
                 "sampling_seconds", "sampling_seconds_per_image", "status"]


def run_sweep(cfg, model: Model, runs, out: Path, ref: metrics.Stats, common: dict, *, resolution: int, device,
              prompts: list[str], classifier) -> Path:
    """Each (scheduler, steps) on the same seeds; sweep.csv is rewritten after every run, so a long sweep that is
    stopped keeps what it measured."""
    rows, records = [], []
    for name, steps in runs:
        run_cfg = dataclasses.replace(cfg, scheduler=name, num_inference_steps=steps)
        try:
            run = generate_and_measure(model, name, run_cfg, resolution=resolution, device=device, prompts=prompts,
                                       classifier=classifier)
        except UserError as e:  # e.g. a multistep solver at as many steps as training timesteps
            rows.append({"scheduler": name, "steps": steps, "status": f"skipped: {e}"})
            print(f"{name} {steps} steps: skipped ({e})")
            continue
        record = run_record(run, ref, run_cfg, prompts, classifier)
        records.append(record)
        rows.append({"scheduler": name, "steps": steps, "network_calls": run.calls_per_image,
                     "fid": round(record["fid"], 4),
                     "kid_mean": round(record["kid_mean"], 6), "kid_std": round(record["kid_std"], 6),
                     "num_samples": record["num_samples"], "sampling_seconds": record["seconds"]["sampling"],
                     "sampling_seconds_per_image": record["sampling_seconds_per_image"], "status": "ok"})
        print(f"{name} {steps} steps: " + summary_line({**record, "reference": {"n": ref.n}}))
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, SWEEP_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if not records:
        raise UserError("--sweep: every run was skipped (see the lines above); choose other --sweep_schedulers.")
    plot_fid_vs_nfe([r for r in rows if r["status"] == "ok"]).save(out / "sweep.png")
    write_json(out / "metrics.json", {"sweep": records, **common})
    print(f"{len(records)} runs → {out / 'sweep.csv'}, {out / 'sweep.png'}, {out / 'metrics.json'}")
    return out
