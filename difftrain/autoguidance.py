"""Autoguidance for unconditional models (Karras et al. 2024): the run keeps its shipping weights from early in
training as guide_unet/, and sampling steers away from that weaker model (pipelines.autoguided_predictor). The guide
costs no training, one UNet on disk, and a second forward per sampling step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .schedulers import samples_stochastically
from .utils import written_beside

GUIDE_FOLDER = "guide_unet"  # beside unet/ in the run folder; plain diffusers' DDPMPipeline ignores it (unguided)
# the default scale (grids, sample.py, evaluate.py), with the guide and interval below: on a default run (1000 samples)
# 4 read 87.9 % legible digits, rarest digit 8.5 %, FID_1k 21.8; 3 in the wider interval (0.28, 5.42] 89.0 %, 6.9 %,
# 22.3; 4 there 92.4 %, but 6.2 % and FID 30.1; 5 in this interval 89.8 %, 8.6 %, 25.8 (README Quality)
AUTOGUIDANCE = 4.0
# the fraction of the run at which the guide is kept: the weaker the guide, the harder it steers; on a default run its EMA
# at 0.08 / 0.16 / 0.24 / 0.32 / 0.48 / 0.64 of the run guided the final model to 88.8 / 88.8 / 86.0 / 85.4 / 81.2 / 74.0 %
# legible digits (scale 3, 500 samples each; README Quality)
AUTOGUIDANCE_SNAPSHOT = 0.15
# the noise levels σ at which the guide acts. Kynkäänniemi et al. 2024 ("Applying guidance in a limited interval
# improves sample and distribution quality") found (0.28, 5.42] for EDM2: below it guidance changes no digit. Above
# σ = 3 the guide decides which digit is drawn, pulling samples to the same few (on a default run at scale 4, the rarest
# digit 4.8 % with the bound at 12, 6.2 % at 5.42, 8.5 % at 3), so it stops there. On the cosine schedule that is
# timesteps 167-793 of 1000.
GUIDANCE_INTERVAL = (0.28, 3.0)
# sampling steps of an autoguided model unless told (sample.py, evaluate.py): the guided steps extrapolate, and finer
# ones follow the guided model better. On a default run at scale 4 (euler_a, 500 samples, two sets of seeds), 50 steps
# read 86.0 / 86.6 % legible digits, 100 steps 89.0 / 88.6 %, 200 steps 88.0 % (README Quality); unguided, 100 steps
# gained nothing over 50
AUTOGUIDANCE_STEPS = 100


def scale_for_sampler(scale: float, sampler: str, training_config, eta: float = 0.0) -> float:
    """The autoguidance scale a sampler gets unless the user names one: `scale` for a stochastic sampler, 1 (no guide)
    for a deterministic one, which the guide makes worse: ddim 50 on a fresh default run read 37 % legible digits at
    scale 3 against 61 % unguided, where euler_a gains (README Quality)."""
    return scale if samples_stochastically(sampler, training_config, eta) else 1.0


def snapshot_step(fraction: float, max_steps: int) -> int | None:
    """The update after which the guide is kept; None for no guide."""
    return max(1, round(fraction * max_steps)) if fraction > 0 else None


def guidance_interval(scheduler_config: dict, interval: tuple[float, float] = GUIDANCE_INTERVAL) -> Callable:
    """guided(t) for the timesteps a sampler passes the network: whether σ(t) is in `interval`. σ(t) comes from the
    training noise schedule, √((1 − ᾱ_t) / ᾱ_t) for discrete timesteps (interpolated for a fractional one), or
    σ = e^(4t) for an EDM model, whose timesteps are c_noise = ln(σ) / 4."""
    low, high = interval
    if "sigma_data" in scheduler_config:  # EDMEulerScheduler: the timesteps it passes are c_noise
        return lambda t: low < math.exp(4 * float(t)) <= high
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.double().numpy()
    sigmas = np.sqrt((1 - alphas) / alphas)
    return lambda t: low < np.interp(float(t), np.arange(len(sigmas)), sigmas) <= high


def save_guide(model: torch.nn.Module, run_folder: Path) -> None:
    """The model as it is now (the shipping weights swapped in) as run_folder/guide_unet, written then renamed."""
    with written_beside(run_folder / GUIDE_FOLDER) as partial:
        model.save_pretrained(str(partial))


def load_guide(folder: Path, unet: torch.nn.Module) -> torch.nn.Module | None:
    """The guide of a run or pipeline folder, in `unet`'s class, dtype and device; None when it has none."""
    if not (Path(folder) / GUIDE_FOLDER / "config.json").is_file():
        return None
    guide = type(unet).from_pretrained(str(Path(folder) / GUIDE_FOLDER), torch_dtype=unet.dtype)
    if _shapes(guide) != _shapes(unet):
        from .errors import UserError

        raise UserError(f"{folder}/{GUIDE_FOLDER} is not the architecture of its unet/; delete {GUIDE_FOLDER}/ "
                        "(sampling is then unguided).")
    return guide.to(unet.device).eval()


def _shapes(unet) -> dict:
    """What must match for the two to share an input and an output: every weight's name and shape (the configs may
    differ in bookkeeping, e.g. an EMA folder's decay)."""
    return {name: tuple(p.shape) for name, p in unet.state_dict().items()}
