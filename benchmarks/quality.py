"""What a trained model is worth: FID/KID against the test split beside the real-vs-real floor at the same N,
legibility and mode coverage (the project's MNIST classifier), prompt accuracy for text models (class accuracy for class models), and what the
training cost. One markdown row (appended to RESULTS/quality.md), a JSON record and a 10×10 grid PNG.

    python benchmarks/quality.py --model runs/mnist -- train_unconditional.py --config configs/mnist.yaml
    python benchmarks/quality.py --model runs/mnist                   # score a folder trained before
    python benchmarks/quality.py --model runs/t2i -- train_text_to_image.py --config configs/mnist_text.yaml

Everything after `--` is the training command (a script of this repository and its flags); it runs as a user
would run it (`python SCRIPT ... --output_dir MODEL`), timed, before the scoring. Samples use what sample.py
uses by default (its scheduler and step count) unless --scheduler/--num_inference_steps say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from difftrain import metrics, references
from difftrain.classifier import load_classifier, predict_proba, train_and_save
from difftrain.inference_config import SampleConfig
from difftrain.scoring import class_prompts
from difftrain.pipelines import image_grid
from difftrain.loading import load_model, resolve_guidance, resolve_steps
from difftrain.sampling import build_scheduler, drawn_classes, sample_images
from difftrain.utils import resolve_device
from difftrain.schedulers import default_scheduler

ROOT = Path(__file__).resolve().parent.parent

LEGIBLE_P = 0.9  # a sample is legible when the classifier gives its top class at least this probability


def parse(argv):
    own, train_cmd = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="The run folder to score (the training's --output_dir).")
    p.add_argument("--name", help="Row label (default: the folder's name).")
    p.add_argument("--num_samples", type=int, help="Samples, and reference images (default: 1000 on CPU, 10000 on "
                   "a GPU).")
    p.add_argument("--scheduler", help="Sampler (default: sample.py's default for this model).")
    p.add_argument("--num_inference_steps", type=int, help="Sampling steps (default: sample.py's default).")
    p.add_argument("--guidance_scale", type=float, help="Classifier-free guidance of a text or class model, "
                   "autoguidance of a run with guide_unet/ (default: the model's own, as sample.py).")
    p.add_argument("--prompt_template", default="a handwritten digit {word}", help="Text models: the prompt of "
                   "image k is this with digit k mod 10.")
    p.add_argument("--classifier", help="Classifier folder (default: one trained once and cached).")
    p.add_argument("--dataset_name", default="mnist", help="Reference dataset.")
    p.add_argument("--split", default="test", help="Reference split.")
    p.add_argument("--no_fid", action="store_true", help="Skip FID/KID (legibility only: seconds, not minutes).")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(own)
    return args, train_cmd


# ----------------------------------------------------------------------------------------------
# Training


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def train(model: Path, command: list[str]) -> dict:
    """Run the training command into `model`, timed; returns wall seconds and images trained."""
    script = command[0] if Path(command[0]).is_file() else str(ROOT / command[0])
    argv = [sys.executable, script, *command[1:], "--output_dir", str(model)]
    print("training:", " ".join(argv), flush=True)
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"error: the training command failed (exit {proc.returncode}); see its output above.")
    # the trainer's plan line: "N examples, U updates/epoch, M updates (E epochs), B images/update"
    plan = re.search(r"(\d+) updates \(\d+ epochs\), (\d+) images/update", "".join(lines))
    images = int(plan[1]) * int(plan[2]) if plan else None
    record = {"command": " ".join(["python", *command]), "train_seconds": round(wall, 1), "train_images": images,
              "images_per_s": round(images / wall, 1) if images else None, "machine": machine()}
    (model / "quality_train.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------------------------
# Scoring


def classifier_for(path: str | None, dataset_name: str, device):
    if path:
        return load_classifier(path, device=device)
    folder = references.stats_cache_dir() / f"classifier-{dataset_name}"
    if not (folder / "config.json").is_file():
        print(f"training the {dataset_name} classifier once → {folder}", flush=True)
        train_and_save(dataset_name, folder, epochs=4)
    return load_classifier(folder, device=device)


def floor_stats(dataset_name: str, split: str, resolution: int, n: int, device) -> metrics.Stats:
    """Real images that are not the reference: the split's next n images (or, when the split has fewer than 2n,
    the train split's first n). Cached beside the reference statistics."""
    path = references.stats_cache_dir() / f"floor-{Path(dataset_name).name}-{split}-{resolution}px-{n}.npz"
    if path.is_file():
        return metrics.Stats.load(path)
    images = references.reference_images(dataset_name, split, resolution, num_samples=2 * n)
    images = images.select(range(n, 2 * n)) if len(images) >= 2 * n else \
        references.reference_images(dataset_name, "train", resolution, num_samples=n)
    stats = metrics.generated_stats((np.stack(images[k : k + 256]["pixels"]) for k in range(0, len(images), 256)),
                                    device=device, total=len(images), desc="floor features")
    path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats


def generate(model, args, device, prompts: list[str]) -> tuple[np.ndarray, dict]:
    name = args.scheduler or default_scheduler(model.scheduler_config)
    cfg = SampleConfig(scheduler=name, num_inference_steps=resolve_steps(model, args.num_inference_steps, name))
    scheduler, step_kwargs = build_scheduler(name, model, cfg)
    seeds = [args.seed + k for k in range(args.num_samples)]
    result = sample_images(model, scheduler, seeds, steps=cfg.num_inference_steps, batch_size=args.batch_size,
                           step_kwargs=step_kwargs, prompts=prompts, negative_prompt=None,
                           guidance_scale=args.guidance_scale, device=device)
    info = {"scheduler": name, "steps": cfg.num_inference_steps, "calls_per_image": result.calls_per_image,
            "sampling_seconds_per_image": round(result.seconds / len(seeds), 4)}
    return result.images.numpy(), info


def score(args, device) -> dict:
    model = load_model(args.model, device=device)
    classifier = classifier_for(args.classifier, args.dataset_name, device)
    # image k shows class k mod 10: named by a prompt (text models) or by its class (class models, in label order)
    # a pixel-cluster model (the default run's): clusters drawn by their sizes, as sample.py draws them
    prompts = drawn_classes(model, [args.seed + k for k in range(args.num_samples)]) if model.class_prior else \
        list(model.class_names) if model.class_names is not None else \
        class_prompts([args.prompt_template], classifier.labels) if model.conditional else []
    name = args.scheduler or default_scheduler(model.scheduler_config)
    args.guidance_scale = resolve_guidance(model, args.guidance_scale, name)
    images, record = generate(model, args, device, prompts)
    if model.guidable:
        record.update(guidance_scale=args.guidance_scale)
    probs = predict_proba(classifier, images)
    read_as, confidence = probs.argmax(1), probs.max(1)
    shares = np.bincount(read_as, minlength=10) / len(images)
    record.update(num_samples=len(images), legible=float((confidence >= LEGIBLE_P).mean()),
                  rarest_class=int(shares.argmin()), rarest_share=float(shares.min()),
                  class_shares=[round(float(s), 4) for s in shares])
    # the same two figures for N real test digits: what a perfect model would score here
    real = np.stack(references.reference_images(args.dataset_name, args.split, images.shape[-1],
                                             num_samples=len(images))[:]["pixels"])
    real_probs = predict_proba(classifier, real)
    record.update(real_legible=float((real_probs.max(1) >= LEGIBLE_P).mean()),
                  real_rarest_share=float((np.bincount(real_probs.argmax(1), minlength=10) / len(real)).min()))
    if prompts and not model.class_prior:
        expected = np.arange(len(images)) % 10
        per_digit = [float((read_as[expected == d] == d).mean()) for d in range(10)]
        record.update(prompt_template=args.prompt_template,
                      prompt_accuracy=float((read_as == expected).mean()), prompt_accuracy_per_digit=per_digit)
    if not args.no_fid:
        resolution = images.shape[-1]
        ref = references.reference_stats(args.dataset_name, args.split, resolution, num_samples=len(images),
                                      device=device)
        floor = floor_stats(args.dataset_name, args.split, resolution, len(images), device)
        stats = metrics.generated_stats([images], device=device, total=len(images), desc="sample features")
        kid_mean, kid_std = metrics.kid(stats, ref, subset_size=metrics.kid_subset_size(stats.n, ref.n))
        record.update(fid=metrics.fid(stats, ref), kid=kid_mean, kid_std=kid_std, fid_floor=metrics.fid(floor, ref))
    return record, images


def markdown_row(name: str, r: dict) -> str:
    def pct(x):
        return "—" if x is None else f"{100 * x:.1f} %"

    fid = f"{r['fid']:.1f}" if "fid" in r else "—"
    floor = f"{r['fid_floor']:.1f}" if "fid_floor" in r else "—"
    prompt = "—"
    if "prompt_accuracy" in r:
        prompt = f"{pct(r['prompt_accuracy'])} (min {pct(min(r['prompt_accuracy_per_digit']))})"
    wall = f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") else "—"
    rate = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "—"
    sampler = f"{r['scheduler']} {r['steps']}" + (f", guidance {r['guidance_scale']:g}" if "guidance_scale" in r else "")
    return (f"| {name} | {sampler} | {r['num_samples']} | {fid} | {floor} | "
            f"{pct(r['legible'])} | {pct(r['rarest_share'])} ({r['rarest_class']}) | {prompt} | {wall} | {rate} | "
            f"{r.get('machine', '—')} |")


HEADER = ("| run | sampler | N | FID_N | real-vs-real FID_N | legible (p ≥ 0.9) | rarest digit | prompt accuracy | "
          "train wall | train img/s | machine |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> dict:
    args, train_cmd = parse(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    args.num_samples = args.num_samples or (10000 if device.type == "cuda" else 1000)
    model = Path(args.model)
    trained = train(model, train_cmd) if train_cmd else {}
    if not trained and (model / "quality_train.json").is_file():
        trained = json.loads((model / "quality_train.json").read_text())
    record, images = score(args, device)
    record = {**trained, **record, "model": str(model)}
    record.setdefault("machine", machine())
    name = args.name or model.name
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    image_grid(torch.from_numpy(images[:100]), cols=10).save(results / f"quality-{name}.png")
    (results / f"quality-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = results / "quality.md"
    row = markdown_row(name, record)
    with table.open("a") as f:
        if table.stat().st_size == 0:
            f.write(HEADER + "\n")
        f.write(row + "\n")
    print(HEADER + "\n" + row)
    return record


if __name__ == "__main__":
    main()
