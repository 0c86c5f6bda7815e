"""Sampling schedulers by short name, always built from the model's TRAINING scheduler config
(betas, number of train steps, prediction_type), so inference never silently mismatches training."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

from .errors import UserError

SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
}


def scheduler_from_training_config(name: str, training_config, **overrides):
    """`name` → a diffusers scheduler sharing the training run's noise schedule."""
    if name not in SCHEDULERS:
        raise UserError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}.")
    cls, defaults = SCHEDULERS[name]
    return cls.from_config(training_config, **{**defaults, **overrides})
