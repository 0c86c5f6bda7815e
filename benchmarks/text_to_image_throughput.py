"""Text-to-image training speed: what the caches buy, measured in one run (not run by CI).

    python benchmarks/text_to_image_throughput.py [--steps 40] [--resolution 32]

1. Caption embeddings: train_text_to_image.py never runs the text encoder during training (every unique caption
   is encoded once, before). The uncached alternative, the diffusers example's, runs the encoder on every batch;
   its cost is measured here as the encoder's time on one batch of captions, added to the measured step.
2. Latents: with --vae_name_or_path the VAE encodes every batch; --cache_latents encodes each image once. Both run
   through train_text_to_image.py (the images/s the trainer logs, see train_throughput.py). No pretrained VAE ships
   in any package, so a random-initialised AutoencoderKL of Stable Diffusion's architecture (8x downsampling,
   83M parameters) stands in: the same compute as the real one.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from train_throughput import run_variant  # beside this file

ROOT = Path(__file__).resolve().parents[1]


def sd_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                  sample_size=512, scaling_factor=0.18215).save_pretrained(folder)
    return folder


def encoder_seconds_per_batch(batch: int, repeats: int = 10) -> float:
    """The MiniLM encoder on one batch of MNIST captions: what an uncached run pays every step."""
    from difftrain.data.builtin import class_captions
    from difftrain.text import TextEncoder, default_text_encoder_path

    encoder = TextEncoder.load(default_text_encoder_path())
    captions = [c for row in class_captions("mnist", [str(d) for d in range(10)]) for c in row]
    prompts = [captions[i % len(captions)] for i in range(batch)]
    encoder.encode(prompts)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(prompts)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/mnist_text.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=32, help="Pixel size for the latent variants.")
    parser.add_argument("--vae_batch", type=int, default=16, help="Batch size of the latent variants.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("pixel", "vae-uncached", "vae-cached"):
            (tmp / name).mkdir()
        vae = str(sd_vae(tmp / "vae"))
        pixel = run_variant(args.config, args.steps, [], {}, tmp / "pixel", "train_text_to_image.py")
        latent_flags = ["--vae_name_or_path", vae, "--resolution", str(args.resolution), "--train_batch_size",
                        str(args.vae_batch), "--max_train_samples", str(args.vae_batch * (args.steps + 5))]
        uncached = run_variant(args.config, args.steps, latent_flags, {}, tmp / "vae-uncached", "train_text_to_image.py")
        cached = run_variant(args.config, args.steps, [*latent_flags, "--cache_latents"], {}, tmp / "vae-cached",
                             "train_text_to_image.py")
    encode = encoder_seconds_per_batch(pixel["batch"])
    step = pixel["batch"] / pixel["images_per_s"]
    print(f"\n{Path(args.config).name}, {args.steps} updates, {os.cpu_count()} CPU cores, torch threads "
          f"{torch.get_num_threads()}\n")
    print("| variant | batch | images/s | vs uncached | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    uncached_text = pixel["batch"] / (step + encode)
    print(f"| pixel, text encoder every step (diffusers example; measured step + measured encode) | {pixel['batch']} "
          f"| {uncached_text:.1f} | 1.00x | |")
    print(f"| pixel, caption embeddings cached (difftrain) | {pixel['batch']} | {pixel['images_per_s']:.1f} | "
          f"{pixel['images_per_s'] / uncached_text:.2f}x | {pixel['peak_rss_gib']:.2f} |")
    print(f"| {args.resolution}px latents, VAE every step | {uncached['batch']} | {uncached['images_per_s']:.1f} | "
          f"1.00x | {uncached['peak_rss_gib']:.2f} |")
    print(f"| {args.resolution}px latents, --cache_latents | {cached['batch']} | {cached['images_per_s']:.1f} | "
          f"{cached['images_per_s'] / uncached['images_per_s']:.2f}x | {cached['peak_rss_gib']:.2f} |")
    print(f"\ntext encoder: {encode * 1000:.1f} ms per batch of {pixel['batch']} captions; "
          f"training step {step * 1000:.1f} ms")


if __name__ == "__main__":
    main()
