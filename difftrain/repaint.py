"""RePaint's resampling (Lugmayr et al. 2022) for sample.py --repaint_jumps: after denoising down to a jump point, the
sample goes back UP the noise schedule by forward diffusion and is denoised again, so the repainted region has more
steps to agree with the known one. The schedule is diffusers' RePaintScheduler's (jump_length; our jumps is its
jump_n_sample - 1); the steps themselves are the chosen sampler's, with pipelines.generate's blend of the known
region."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from .errors import UserError

# Jumping back to an earlier step is only well defined for a sampler whose next step depends on the sample and the
# timestep alone: DDPM and DDIM step statelessly, the Euler ones keep only a step counter (rewound below). Multistep
# solvers (DPM-Solver, UniPC, DEIS, PNDM, LMS) and Heun's two stages keep a history a jump would make wrong.
ALPHA_SCHEDULERS = (DDPMScheduler, DDIMScheduler)  # the sample is sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε
SIGMA_SCHEDULERS = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)  # the sample is x0 + σ ε
JUMP_SCHEDULERS = "ddpm, ddim, euler and euler_a"
JUMP_LENGTH = 10  # RePaint's and diffusers' default


def check_scheduler(name: str, scheduler) -> None:
    if type(scheduler) not in ALPHA_SCHEDULERS + SIGMA_SCHEDULERS:
        raise UserError(f"--repaint_jumps needs a single-step sampler ({JUMP_SCHEDULERS}; not for EDM models): "
                        f"{name} keeps a history that jumping back would invalidate. Pick one with --scheduler.")


def step_order(num_steps: int, jump_length: int, jumps: int) -> list[int]:
    """The order the steps 0..num_steps-1 are denoised in: a jump point every jump_length steps counted from the last
    step (and not within jump_length of the first), where after the step the sample goes back up to the noise level
    jump_length steps earlier, `jumps` times, before going on; as diffusers' RePaintScheduler.set_timesteps."""
    remaining = {num_steps - 1 - j: jumps for j in range(0, num_steps - jump_length, jump_length)}
    order, i = [], 0
    while i < num_steps:
        order.append(i)
        if remaining.get(i, 0) > 0:
            remaining[i] -= 1
            i += 1 - jump_length
        else:
            i += 1
    return order


def check_steps(denoised_steps: int, jump_length: int) -> None:
    if denoised_steps <= jump_length:
        raise UserError(f"--repaint_jumps jumps back --repaint_jump_length {jump_length} steps, so it needs more steps "
                        f"than that; this run denoises {denoised_steps} (--num_inference_steps × --strength): raise "
                        "--num_inference_steps or lower --repaint_jump_length.")


@dataclass
class Resampling:
    """What pipelines.generate asks about jumps: the step order, and how to go back up between two steps."""

    jumps: int
    jump_length: int = JUMP_LENGTH

    def order(self, num_steps: int) -> list[int]:
        return step_order(num_steps, self.jump_length, self.jumps)

    def renoise(self, scheduler, x: torch.Tensor, timesteps: torch.Tensor, start: int, level: int, to: int,
                generators: list[torch.Generator]) -> torch.Tensor:
        """x, at the noise level before step `level` of `timesteps` (len(timesteps): after the last step, clean),
        diffused forward, q(x_to | x_level), to the level before step `to`; the noise from each image's own generator,
        so image k still comes from seed k alone. `start`: where timesteps begins in the scheduler's schedule."""
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.device, x.dtype)
        if isinstance(scheduler, SIGMA_SCHEDULERS):
            high, low = scheduler.sigmas[start + to], scheduler.sigmas[start + level]
            scheduler._step_index = start + to  # their only state: the sigma the next step starts from
            return x + (high**2 - low**2).sqrt().to(x.device, x.dtype) * noise
        alpha_bar = scheduler.alphas_cumprod
        kept = alpha_bar[int(timesteps[to])] / (alpha_bar[int(timesteps[level])] if level < len(timesteps) else 1.0)
        return kept.sqrt().to(x.device, x.dtype) * x + (1 - kept).sqrt().to(x.device, x.dtype) * noise
