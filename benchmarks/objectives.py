"""Training objectives compared on MNIST: same UNet, same number of optimizer updates, then the held-out
denoising error ‖x̂0 − x0‖² per noise level (not run by CI).

    python benchmarks/objectives.py [--steps 300] [--eval_images 512]

Every model is asked for x̂0 from the same test images noised to the same σ (the σ of DDPM timesteps
10 … 999: x_t = √ᾱ(x0 + σn)), each through its own parameterisation: ε, v, x0 by formula, EDM by D(x; σ).
x̂0 is clipped to [-1, 1] as samplers with clip_sample do (unclipped, ε's x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ explodes
at high noise by construction). Lower is better; one table, all columns from one run.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler

from difftrain.data import to_model_range
from difftrain.data.builtin import load_builtin
from difftrain.data.images import prepare_images
from difftrain.objectives import edm_denoise

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "eps": [],
    "v": ["--prediction_type", "v_prediction"],
    "eps+minSNR5": ["--snr_gamma", "5"],
    "edm": ["--objective", "edm"],
}
TIMESTEPS = [10, 50, 100, 200, 400, 700, 999]


def train(name: str, flags: list[str], steps: int, root: Path) -> tuple[Path, float]:
    out = root / name
    cmd = [sys.executable, str(ROOT / "train_unconditional.py"), "--output_dir", str(out), "--max_train_steps",
           str(steps), "--validation_steps", "1000000", "--checkpointing_steps", "1000000", "--report_to", "none",
           "--seed", "0", *flags]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out, time.perf_counter() - start


@torch.no_grad()
def x0_hat(folder: Path, noisy_x0_space: torch.Tensor, sigma: float, t: int, alphas_cumprod) -> torch.Tensor:
    """The model's estimate of x0 from x0 + σn (given in 'EDM space'); DDPM models see √ᾱ_t times it at t."""
    pipe = DDPMPipeline.from_pretrained(folder)
    unet, config = pipe.unet.eval(), pipe.scheduler.config
    if "sigma_data" in config:
        return edm_denoise(lambda x, c: unet(x, c).sample, noisy_x0_space, torch.tensor(sigma), config.sigma_data)
    a = alphas_cumprod[t]
    x_t = a.sqrt() * noisy_x0_space
    out = unet(x_t, torch.full((x_t.shape[0],), t)).sample
    if config.prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    if config.prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval_images", type=int, default=512)
    args = parser.parse_args()
    test = prepare_images(load_builtin("mnist", "test").select(range(args.eval_images)), "image", 32,
                          center_crop=True, image_mode="auto")
    x0 = to_model_range(torch.stack([torch.from_numpy(test[i]["pixels"].copy()) for i in range(len(test))]))
    alphas_cumprod = DDPMScheduler().alphas_cumprod  # the default linear schedule every DDPM variant trains with
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        trained = {name: train(name, flags, args.steps, Path(tmp)) for name, flags in VARIANTS.items()}
        rows = []
        for t in TIMESTEPS:
            a = alphas_cumprod[t]
            sigma = ((1 - a) / a).sqrt().item()
            noisy = x0 + sigma * noise
            errors = {name: ((x0_hat(folder, noisy, sigma, t, alphas_cumprod).clamp(-1, 1) - x0) ** 2).mean().item()
                      for name, (folder, _) in trained.items()}
            rows.append((t, sigma, errors))
    print(f"\nMNIST 32 px, configs/mnist.yaml UNet, {args.steps} updates of 64, {args.eval_images} test images; "
          "held-out MSE of x̂0 clipped to [-1, 1] (lower is better)\n")
    print("| t | σ | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for t, sigma, errors in rows:
        best = min(errors.values())
        cells = [f"**{e:.4f}**" if e == best else f"{e:.4f}" for e in errors.values()]
        print(f"| {t} | {sigma:.3g} | " + " | ".join(cells) + " |")
    print("| train time (s) | | " + " | ".join(f"{seconds:.0f}" for _, seconds in trained.values()) + " |")


if __name__ == "__main__":
    main()
