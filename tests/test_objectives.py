import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from difftrain import objectives

T = 1000
STEPS = torch.tensor([0, 499, T - 1])


@pytest.fixture
def scheduler():
    return DDPMScheduler(num_train_timesteps=T)


@pytest.fixture
def x0_noise():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)


def test_add_noise_by_formula(scheduler, x0_noise):
    x0, noise = x0_noise
    a = scheduler.alphas_cumprod
    got = objectives.add_noise(x0, noise, a, STEPS)
    for i, t in enumerate(STEPS.tolist()):
        want = math.sqrt(a[t]) * x0[i] + math.sqrt(1 - a[t]) * noise[i]
        assert torch.allclose(got[i], want, atol=1e-6)
    assert torch.allclose(got, scheduler.add_noise(x0, noise, STEPS), atol=1e-6)


def test_targets_by_formula(scheduler, x0_noise):
    x0, noise = x0_noise
    a = scheduler.alphas_cumprod
    assert torch.equal(objectives.target("epsilon", x0, noise, a, STEPS), noise)
    assert torch.equal(objectives.target("sample", x0, noise, a, STEPS), x0)
    v = objectives.target("v_prediction", x0, noise, a, STEPS)
    for i, t in enumerate(STEPS.tolist()):
        assert torch.allclose(v[i], math.sqrt(a[t]) * noise[i] - math.sqrt(1 - a[t]) * x0[i], atol=1e-6)
    assert torch.allclose(v, scheduler.get_velocity(x0, noise, STEPS), atol=1e-6)
    # at t = 0 nearly all signal: v ≈ ε; at t = T-1 nearly all noise: v ≈ -x0
    assert torch.allclose(v[0], noise[0], atol=0.05) and torch.allclose(v[2], -x0[2], atol=0.05)


def test_snr_matches_diffusers(scheduler):
    assert torch.allclose(objectives.snr(scheduler.alphas_cumprod, STEPS), compute_snr(scheduler, STEPS), rtol=1e-5)


def test_min_snr_weights_by_formula(scheduler):
    snr = objectives.snr(scheduler.alphas_cumprod, STEPS)  # t=0: ~1e4, t=499: ~0.09, t=T-1: ~4e-5
    gamma = 5.0
    eps = objectives.min_snr_weight(snr, gamma, "epsilon")
    v = objectives.min_snr_weight(snr, gamma, "v_prediction")
    x0 = objectives.min_snr_weight(snr, gamma, "sample")
    for i in range(3):
        s = snr[i].item()
        assert eps[i].item() == pytest.approx(min(s, gamma) / s, rel=1e-5)
        assert v[i].item() == pytest.approx(min(s, gamma) / (s + 1), rel=1e-5)
        assert x0[i].item() == pytest.approx(min(s, gamma), rel=1e-5)
    # v differs from ε by exactly SNR / (SNR + 1): clipped at high SNR, ≈ the ε weight (1) at low SNR
    assert torch.allclose(v / eps, snr / (snr + 1), rtol=1e-5)
    assert eps[0].item() == pytest.approx(gamma / snr[0].item(), rel=1e-5) and eps[2].item() == 1.0


def test_loss_is_zero_for_a_perfect_predictor(scheduler, x0_noise):
    """The loss compares like with like: an oracle for each target scores 0."""
    x0, _ = x0_noise
    a = scheduler.alphas_cumprod
    for kind in objectives.PREDICTION_TYPES:
        objective = objectives.DiffusionObjective(scheduler, kind, snr_gamma=5.0)
        seen = {}

        def oracle(x_t, t):
            # invert x_t = √ᾱ x0 + √(1-ᾱ) ε for ε, then form the requested target
            at = a[t].reshape(-1, 1, 1, 1)
            noise = (x_t - at.sqrt() * x0) / (1 - at).sqrt()
            seen["t"] = t
            return objectives.target(kind, x0, noise, a, t)

        assert objective.loss(oracle, x0).item() < 1e-8
        assert objective.loss(lambda x_t, t: torch.zeros_like(x_t), x0).item() > 1e-3
        assert seen["t"].min() >= 0 and seen["t"].max() < T


def test_offset_noise_shifts_whole_channels():
    like = torch.zeros(())
    torch.manual_seed(0)
    plain = objectives.offset_noise((256, 2, 8, 8), 0.0, like=like)
    torch.manual_seed(0)
    offset = objectives.offset_noise((256, 2, 8, 8), 0.5, like=like)
    shift = offset - plain
    assert torch.equal(plain, torch.randn((256, 2, 8, 8), generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # one constant per image+channel
    assert 0.4 < shift[:, :, 0, 0].std().item() < 0.6


def test_input_perturbation_changes_the_input_not_the_target(scheduler, x0_noise):
    x0, _ = x0_noise
    seen = {}

    def record(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    for gamma in (0.0, 0.5):
        torch.manual_seed(1)
        loss = objectives.DiffusionObjective(scheduler, "epsilon", input_perturbation=gamma).loss(record, x0)
        torch.manual_seed(1)
        noise, t = torch.randn_like(x0), torch.randint(0, T, (3,))
        clean_input = objectives.add_noise(x0, noise, scheduler.alphas_cumprod, t)
        # the target is the unperturbed ε either way: a zero prediction scores mean(ε²)
        assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-5)
        assert torch.allclose(seen["x_t"], clean_input) == (gamma == 0.0)


def test_zero_terminal_snr_weights_stay_finite():
    zsnr = DDPMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=True)
    s = objectives.snr(zsnr.alphas_cumprod, STEPS)
    assert s[2].item() == 0.0
    for kind, at_zero in (("epsilon", 1.0), ("v_prediction", 0.0), ("sample", 0.0)):
        w = objectives.min_snr_weight(s, 5.0, kind)
        assert torch.isfinite(w).all() and w[2].item() == at_zero  # the SNR → 0 limits


SIGMAS = torch.tensor([0.002, 0.5, 80.0])


def test_edm_scalings_and_weight_by_formula():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = objectives.edm_scalings(SIGMAS, sd)
    lam = objectives.edm_weight(SIGMAS, sd)
    for i, s in enumerate(SIGMAS.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-5)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-5)
        assert lam[i].item() == pytest.approx((s**2 + sd**2) / (s * sd) ** 2, rel=1e-5)
    # λ · c_out² = 1: the weighted loss is the plain MSE of F against its effective target
    assert torch.allclose(lam * c_out**2, torch.ones(3), rtol=1e-5)


def test_edm_preconditioning_round_trip_matches_diffusers(x0_noise):
    """A network that outputs the right F makes D(x; σ) give x0 exactly; diffusers' EDM scheduler agrees."""
    from diffusers import EDMEulerScheduler

    x0, n = x0_noise
    sd, sigma = 0.5, SIGMAS.reshape(3, 1, 1, 1)
    noisy = x0 + sigma * n
    c_skip, c_out, c_in, c_noise = objectives.edm_scalings(sigma, sd)
    seen = {}

    def right_f(scaled, noise_level):
        seen["in"], seen["t"] = scaled, noise_level
        return (x0 - c_skip * noisy) / c_out  # the F for which D = x0

    denoised = objectives.edm_denoise(right_f, noisy, sigma, sd)
    assert torch.allclose(denoised, x0, atol=1e-4)
    assert torch.allclose(seen["in"], noisy * c_in) and torch.allclose(seen["t"], SIGMAS.log() / 4)
    edm = EDMEulerScheduler(sigma_data=sd)
    for i in range(3):
        ours = objectives.edm_denoise(lambda x, t: torch.ones_like(x), noisy[i : i + 1], sigma[i : i + 1], sd)
        theirs = edm.precondition_outputs(noisy[i : i + 1], torch.ones_like(x0[:1]), SIGMAS[i])
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_edm_loss_is_zero_for_the_right_network(x0_noise):
    x0, _ = x0_noise
    objective = objectives.EDMObjective()

    def oracle(scaled, c_noise):
        sigma = (4 * c_noise).exp().reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = objectives.edm_scalings(sigma, 0.5)
        return (x0 - c_skip * scaled / c_in) / c_out

    assert objective.loss(oracle, x0).item() < 1e-6
    assert objective.loss(lambda s, c: torch.zeros_like(s), x0).item() > 0.1


def test_min_snr_composes_with_edm_as_min_snr_in_x0_space():
    """The weighting is a part of its own: on EDM's F it is min(SNR, γ)/λ(σ), i.e. min(1/σ², γ) in x0 space."""
    weight = objectives.EDMObjective(snr_gamma=5.0).weight(SIGMAS)
    x0_space = weight * objectives.edm_weight(SIGMAS, 0.5)
    assert torch.allclose(x0_space, torch.minimum(1 / SIGMAS**2, torch.tensor(5.0)), rtol=1e-5)
    assert torch.equal(objectives.EDMObjective().weight(SIGMAS), torch.ones(3))  # natural: λ(σ)


def test_edm_takes_offset_noise_and_input_perturbation(x0_noise):
    """Perturbed noise changes the network's input; the target stays D = x0, so an oracle that denoises what it
    sees to x0 still scores 0, and offset noise shifts whole channels of the input."""
    x0, _ = x0_noise
    seen = {}

    def oracle(scaled, c_noise):
        sigma = (4 * c_noise).exp().reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = objectives.edm_scalings(sigma, 0.5)
        seen.setdefault("inputs", []).append(scaled)
        return (x0 - c_skip * scaled / c_in) / c_out

    for gamma, offset in ((0.0, 0.0), (0.5, 0.0), (0.0, 1.0)):
        torch.manual_seed(1)
        assert objectives.EDMObjective(input_perturbation=gamma, noise_offset=offset).loss(oracle, x0).item() < 1e-6
    plain, perturbed, offset = seen["inputs"]
    assert not torch.allclose(plain, perturbed) and not torch.allclose(plain, offset)


def test_dream_shifts_input_and_target_by_the_models_own_error(scheduler, x0_noise):
    x0, noise = x0_noise
    a = scheduler.alphas_cumprod
    p = objectives.DiscreteVP(a, "epsilon")
    x_t = p.noisy(x0, noise, STEPS)
    guess = 0.3 * noise  # a network that gets 30 % of the noise right
    x_new, target_new = objectives.dream(lambda x, t: guess, p, x_t, noise, noise, STEPS, detail_preservation=2.0)
    s = (1 - a[STEPS]).sqrt().reshape(-1, 1, 1, 1)
    delta = s**2 * (noise - guess)  # λ = √(1−ᾱ)^p, p = 2
    assert torch.allclose(x_new, x_t + s * delta, atol=1e-6) and torch.allclose(target_new, noise + delta, atol=1e-6)
