"""evaluate.py --sweep: FID for each scheduler × steps on the same seeds; sweep.csv (rewritten after every run),
sweep.png (FID against network calls per image) and metrics.json."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from . import metrics
from .errors import UserError
from .loading import Model, resolve_guidance
from .plots import plot_fid_vs_nfe
from .schedulers import scheduler_table
from .scoring import generate_and_measure, run_record, summary_line, write_json


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


SWEEP_COLUMNS = ["scheduler", "steps", "guidance_scale", "network_calls", "fid", "kid_mean", "kid_std", "num_samples",
                 "sampling_seconds", "sampling_seconds_per_image", "status"]


def run_sweep(cfg, model: Model, runs, out: Path, ref: metrics.Stats, common: dict, *, resolution: int, device,
              prompts: list[str], classifier) -> Path:
    """Each (scheduler, steps) on the same seeds; sweep.csv is rewritten after every run, so a long sweep that is
    stopped keeps what it measured."""
    rows, records = [], []
    for name, steps in runs:
        try:
            guidance = resolve_guidance(model, cfg.guidance_scale, name, cfg.eta)  # autoguidance: stochastic ones
            run_cfg = dataclasses.replace(cfg, scheduler=name, num_inference_steps=steps, guidance_scale=guidance)
            run = generate_and_measure(model, name, run_cfg, resolution=resolution, device=device, prompts=prompts,
                                       classifier=classifier)
        except UserError as e:  # e.g. a multistep solver at as many steps as training timesteps
            rows.append({"scheduler": name, "steps": steps, "status": f"skipped: {e}"})
            print(f"{name} {steps} steps: skipped ({e})")
            continue
        record = {**run_record(run, ref, run_cfg, prompts, classifier),
                  "guidance_scale": guidance if model.guidable else None}
        records.append(record)
        rows.append({"scheduler": name, "steps": steps, "guidance_scale": record["guidance_scale"],
                     "network_calls": run.calls_per_image,
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
