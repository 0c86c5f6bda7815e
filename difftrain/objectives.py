"""Training objectives, composed as in Stability's sgm: a NOISE LEVEL sampler (the timestep or σ each image trains
at), a PARAMETERISATION (the noisy input, what the network is asked to output, and its target) and a WEIGHTING per
noise level; offset noise and input perturbation change the noise drawn. Each piece is a pure function, checkable
by formula; `Objective.loss` is the one call the training loop makes.

Why the weightings compose: every parameterisation's output F makes a denoised image D = c_skip·x + c_out·F, so
‖F − F_target‖² = ‖D − x0‖² / c_out². Its plain MSE is therefore the x0-space error under its own NATURAL weight
1/c_out² (ε: SNR, v: SNR + 1, x0: 1, EDM: λ(σ)). Min-SNR-γ asks for min(SNR, γ) in x0 space instead, which on F is
min(SNR, γ) / natural weight, for any parameterisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _gather(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(device=like.device, dtype=torch.float32)[t]
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0, noise, alphas_cumprod, t):
    """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε"""
    a = _gather(alphas_cumprod, t, x0)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def target(prediction_type: str, x0, noise, alphas_cumprod, t):
    """What the network should output: ε, v = √ᾱ·ε − √(1−ᾱ)·x0, or x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        a = _gather(alphas_cumprod, t, x0)
        return (a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()).to(x0.dtype)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}")


def snr(alphas_cumprod, t):
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)."""
    a = alphas_cumprod.to(torch.float64)[t]
    return (a / (1 - a)).float()


def offset_noise(shape, offset: float, *, like: torch.Tensor) -> torch.Tensor:
    """ε + offset · n with n ~ N(0, 1) per (image, channel): shifts whole channels, so the model can learn
    to change an image's mean brightness (Guttenberg 2023, diffusers' --noise_offset)."""
    noise = torch.randn(shape, device=like.device, dtype=like.dtype)
    if offset:
        noise = noise + offset * torch.randn(shape[:2] + (1,) * (len(shape) - 2), device=like.device, dtype=like.dtype)
    return noise


def natural_weight(prediction_type: str, snr_t):
    """The x0-space weight that a plain MSE on the target implies: ‖ε̂−ε‖² = SNR·‖x̂0−x0‖², ‖v̂−v‖² = (SNR+1)·‖x̂0−x0‖²."""
    if prediction_type == "epsilon":
        return snr_t
    if prediction_type == "v_prediction":
        return snr_t + 1
    if prediction_type == "sample":
        return torch.ones_like(snr_t)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}")


def min_snr_over(natural, snr_t, gamma: float):
    """Min-SNR-γ (Hang et al. 2023) as a multiplier of the parameterisation's plain MSE: min(SNR, γ) / natural
    weight; where both are 0 (ε at a zero-terminal-SNR step) the limit is 1, not 0/0."""
    clipped = torch.minimum(snr_t, torch.full_like(snr_t, gamma))
    return torch.where(natural > 0, clipped / natural.clamp_min(torch.finfo(natural.dtype).tiny), torch.ones_like(natural))


def min_snr_weight(snr_t, gamma: float, prediction_type: str):
    """Min-SNR-γ for the DDPM parameterisations: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v, min(SNR, γ)
    for x0."""
    return min_snr_over(natural_weight(prediction_type, snr_t), snr_t, gamma)


# ----------------------------------------------------------------------------------------------
# EDM (Karras et al. 2022): continuous σ, preconditioning around the network, loss weight λ(σ).


def edm_scalings(sigma, sigma_data: float):
    """Table 1 of the EDM paper: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), 0.25 * sigma.log()


def edm_weight(sigma, sigma_data: float):
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)² = 1/c_out²: EDM's natural weight, which makes F's target unit-variance."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(predict: Callable, noisy, sigma, sigma_data: float):
    """D(x; σ) with the network F = predict(c_in·x, c_noise); sigma broadcasts against noisy."""
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_data)
    return c_skip * noisy + c_out * predict(c_in * noisy, c_noise.flatten()).float()


# ----------------------------------------------------------------------------------------------
# Parameterisations: level → (noisy input, network output, target, SNR, natural weight)


class DiscreteVP:
    """DDPM's variance-preserving process on a discrete schedule: level = timestep t, x_t = √ᾱ·x0 + √(1−ᾱ)·ε, the
    network called as predict(x_t, t) and asked for ε, v or x0."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}")
        self.alphas_cumprod, self.prediction_type = alphas_cumprod.clone(), prediction_type

    def noisy(self, x0, noise, t):
        return add_noise(x0, noise, self.alphas_cumprod, t)

    def output(self, predict: Callable, x_t, t):
        return predict(x_t, t)

    def target(self, x0, noise, x_t, t):
        return target(self.prediction_type, x0, noise, self.alphas_cumprod, t)

    def snr(self, t):
        return snr(self.alphas_cumprod, t.cpu()).to(t.device)

    def natural_weight(self, t):
        return natural_weight(self.prediction_type, self.snr(t))


class EDMPreconditioning:
    """EDM's variance-exploding process: level = σ, x = x0 + σ·n, the network called as F(c_in·x, c_noise) and asked
    for F_target = (x0 − c_skip·x)/c_out (diffusers' EDM schedulers undo the same scalings at sampling)."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def _shaped(self, sigma, like):
        return sigma.reshape(-1, *([1] * (like.ndim - 1)))

    def noisy(self, x0, noise, sigma):
        return x0.float() + self._shaped(sigma, x0) * noise.float()

    def output(self, predict: Callable, x, sigma):
        _, _, c_in, c_noise = edm_scalings(self._shaped(sigma, x), self.sigma_data)
        return predict(c_in * x, c_noise.flatten())

    def target(self, x0, noise, x, sigma):
        c_skip, c_out, _, _ = edm_scalings(self._shaped(sigma, x), self.sigma_data)
        return (x0.float() - c_skip * x) / c_out

    def snr(self, sigma):
        return 1 / sigma**2

    def natural_weight(self, sigma):
        return edm_weight(sigma, self.sigma_data)


# ----------------------------------------------------------------------------------------------
# Noise levels


def uniform_timesteps(num_timesteps: int) -> Callable:
    """Every training timestep equally often (DDPM)."""
    return lambda n, device: torch.randint(0, num_timesteps, (n,), device=device)


def lognormal_sigmas(p_mean: float, p_std: float) -> Callable:
    """ln σ ~ N(P_mean, P_std²) (EDM): most training where the denoiser can learn most."""
    return lambda n, device: (torch.randn(n, device=device) * p_std + p_mean).exp()


# ----------------------------------------------------------------------------------------------
# The objective


@dataclass
class Objective:
    """loss = mean over images of weight(level) · ‖F − F_target‖², with the level from `noise_level`, the noise
    shifted by `noise_offset` and the network's input (not its target) perturbed by `input_perturbation` (Ning et
    al. 2023). weight = 1 is the parameterisation's natural weighting; snr_gamma switches to min-SNR-γ."""

    noise_level: Callable  # (batch size, device) → levels
    parameterisation: DiscreteVP | EDMPreconditioning
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    input_perturbation: float = 0.0
    dream_detail_preservation: float | None = None  # set: DREAM (ε only), with this exponent p

    def weight(self, level):
        if self.snr_gamma is None:
            return torch.ones_like(level, dtype=torch.float32)
        p = self.parameterisation
        return min_snr_over(p.natural_weight(level).float(), p.snr(level).float(), self.snr_gamma)

    def loss(self, predict: Callable, x0: torch.Tensor) -> torch.Tensor:
        """predict → the network's output (as the parameterisation calls it); returns the mean weighted MSE."""
        p = self.parameterisation
        noise = offset_noise(x0.shape, self.noise_offset, like=x0)
        level = self.noise_level(x0.shape[0], x0.device)
        seen_noise = noise + self.input_perturbation * torch.randn_like(noise) if self.input_perturbation else noise
        x = p.noisy(x0, seen_noise, level)
        wanted = p.target(x0, noise, x, level)
        if self.dream_detail_preservation is not None:
            x, wanted = dream(predict, p, x, wanted, noise, level, self.dream_detail_preservation)
        per_sample = F.mse_loss(p.output(predict, x, level).float(), wanted.float(),
                                reduction="none").mean(dim=tuple(range(1, x0.ndim)))
        return (self.weight(level).to(per_sample.device) * per_sample).mean()


def dream(predict: Callable, p: DiscreteVP, x_t, wanted, noise, t, detail_preservation: float):
    """DREAM (Zhou et al. 2024), by diffusers' compute_dream_and_update_latents: one extra forward without gradient
    estimates the network's own error δ = λ·(ε − ε̂), λ = √(1−ᾱ)^p; train on x_t + √(1−ᾱ)·δ towards ε + δ, as at
    sampling time the network sees its own mistakes. ε-prediction only (as in diffusers)."""
    from types import SimpleNamespace

    from diffusers.training_utils import compute_dream_and_update_latents

    as_unet = lambda x, level, _context: SimpleNamespace(sample=predict(x, level))  # noqa: E731 (its call shape)
    schedule = SimpleNamespace(alphas_cumprod=p.alphas_cumprod, config=SimpleNamespace(prediction_type=p.prediction_type))
    return compute_dream_and_update_latents(as_unet, schedule, t, noise, x_t, wanted, None, detail_preservation)


class DiffusionObjective(Objective):
    """Discrete-time DDPM training: uniform t on the training scheduler's schedule, ε, v or x0 targets."""

    def __init__(self, noise_scheduler, prediction_type: str, snr_gamma: float | None = None,
                 noise_offset: float = 0.0, input_perturbation: float = 0.0,
                 dream_detail_preservation: float | None = None):
        super().__init__(uniform_timesteps(noise_scheduler.config.num_train_timesteps),
                         DiscreteVP(noise_scheduler.alphas_cumprod, prediction_type), snr_gamma, noise_offset,
                         input_perturbation, dream_detail_preservation)


class EDMObjective(Objective):
    """EDM training: log-normal σ, preconditioned network; λ(σ) unless --snr_gamma asks for min-SNR-γ."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, *,
                 snr_gamma: float | None = None, noise_offset: float = 0.0, input_perturbation: float = 0.0):
        super().__init__(lognormal_sigmas(p_mean, p_std), EDMPreconditioning(sigma_data), snr_gamma, noise_offset,
                         input_perturbation)


def objective_for(cfg, noise_scheduler):
    """The objective the config asks for (--objective, --prediction_type, --snr_gamma, --noise_offset,
    --input_perturbation, --dream_training), on the training scheduler's noise schedule."""
    if cfg.objective == "edm":
        return EDMObjective(cfg.sigma_data, cfg.edm_p_mean, cfg.edm_p_std, snr_gamma=cfg.snr_gamma,
                            noise_offset=cfg.noise_offset, input_perturbation=cfg.input_perturbation)
    prediction_type = noise_scheduler.config.prediction_type
    if cfg.dream_training and prediction_type != "epsilon":
        raise UserError(f"--dream_training works with epsilon prediction only (as in diffusers); this run predicts "
                        f"{prediction_type}: pass --prediction_type epsilon or drop --dream_training.")
    return DiffusionObjective(noise_scheduler, prediction_type, cfg.snr_gamma, cfg.noise_offset,
                              cfg.input_perturbation, cfg.dream_detail_preservation if cfg.dream_training else None)
