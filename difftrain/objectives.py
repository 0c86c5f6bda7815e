"""Training objectives as pure functions of (x0, noise, t, alphas_cumprod): checkable by formula.

`DiffusionObjective` is the one small object the training loop calls: it draws noise and timesteps,
asks the network for a prediction, and returns the weighted loss.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

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


def min_snr_weight(snr_t, gamma: float, prediction_type: str):
    """Min-SNR-γ (Hang et al. 2023) for the loss in each parameterisation: the ε-loss weight min(SNR, γ)/SNR
    becomes min(SNR, γ)/(SNR + 1) for v and min(SNR, γ) for x0, since ‖v̂−v‖² = (SNR+1)‖ε̂−ε‖²
    and ‖x̂0−x0‖² = ‖ε̂−ε‖²/SNR."""
    clipped = torch.minimum(snr_t, torch.full_like(snr_t, gamma))
    if prediction_type == "epsilon":
        # min(SNR, γ)/SNR → 1 as SNR → 0: the limit, not 0/0, at a zero-terminal-SNR step
        return torch.where(snr_t > 0, clipped / snr_t.clamp_min(torch.finfo(snr_t.dtype).tiny), torch.ones_like(snr_t))
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}")


class DiffusionObjective:
    """Discrete-time DDPM training: uniform t, a target per prediction type, optional min-SNR weights,
    offset noise, and input perturbation (Ning et al. 2023: the network sees ε + γ·n, the target keeps ε)."""

    def __init__(self, noise_scheduler, prediction_type: str, snr_gamma: float | None = None,
                 noise_offset: float = 0.0, input_perturbation: float = 0.0):
        self.alphas_cumprod = noise_scheduler.alphas_cumprod.clone()
        self.num_timesteps = noise_scheduler.config.num_train_timesteps
        self.prediction_type = prediction_type
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset
        self.input_perturbation = input_perturbation

    def loss(self, predict: Callable, x0: torch.Tensor) -> torch.Tensor:
        """predict(x_t, t) → network output; returns the mean weighted MSE."""
        noise = offset_noise(x0.shape, self.noise_offset, like=x0)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        seen_noise = noise + self.input_perturbation * torch.randn_like(noise) if self.input_perturbation else noise
        prediction = predict(add_noise(x0, seen_noise, self.alphas_cumprod, t), t)
        per_sample = F.mse_loss(
            prediction.float(), target(self.prediction_type, x0, noise, self.alphas_cumprod, t).float(),
            reduction="none",
        ).mean(dim=tuple(range(1, x0.ndim)))
        if self.snr_gamma is not None:
            per_sample = per_sample * min_snr_weight(snr(self.alphas_cumprod, t.cpu()), self.snr_gamma,
                                                     self.prediction_type).to(per_sample.device)
        return per_sample.mean()


# ----------------------------------------------------------------------------------------------
# EDM (Karras et al. 2022): continuous σ, preconditioning around the network, loss weight λ(σ).


def edm_scalings(sigma, sigma_data: float):
    """Table 1 of the EDM paper: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), 0.25 * sigma.log()


def edm_weight(sigma, sigma_data: float):
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)², which makes the effective target of F unit-variance at every σ."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(predict: Callable, noisy, sigma, sigma_data: float):
    """D(x; σ) with the network F = predict(c_in·x, c_noise); sigma broadcasts against noisy."""
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_data)
    return c_skip * noisy + c_out * predict(c_in * noisy, c_noise.flatten()).float()


class EDMObjective:
    """σ ~ log-normal(P_mean, P_std); loss λ(σ)·‖D(x0 + σn; σ) − x0‖². diffusers' EDM schedulers apply the same
    preconditioning at sampling time (their prediction_type "epsilon" is this c_out)."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2):
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def loss(self, predict: Callable, x0: torch.Tensor) -> torch.Tensor:
        shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
        sigma = (torch.randn(shape, device=x0.device) * self.p_std + self.p_mean).exp()
        noisy = x0.float() + sigma * torch.randn_like(x0, dtype=torch.float32)
        denoised = edm_denoise(predict, noisy, sigma, self.sigma_data)
        return (edm_weight(sigma, self.sigma_data) * (denoised - x0.float()) ** 2).mean()


def objective_for(cfg, noise_scheduler):
    """The objective the config asks for (--objective, --prediction_type, --snr_gamma, --noise_offset,
    --input_perturbation), on the training scheduler's noise schedule."""
    if cfg.objective == "edm":
        return EDMObjective(cfg.sigma_data, cfg.edm_p_mean, cfg.edm_p_std)
    return DiffusionObjective(noise_scheduler, noise_scheduler.config.prediction_type, cfg.snr_gamma,
                              cfg.noise_offset, cfg.input_perturbation)
