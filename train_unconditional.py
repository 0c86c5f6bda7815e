#!/usr/bin/env python
"""Train an unconditional diffusion model (UNet2DModel + DDPMScheduler); default: built-in MNIST, offline.

    accelerate launch train_unconditional.py [--config configs/mnist.yaml] [--any_flag value ...]

Flags are those of diffusers' examples/unconditional_image_generation/train_unconditional.py;
`--help` lists them all. From scratch the model is conditioned on its own pixel clusters (--num_clusters; no labels
read) and the output folder loads with difftrain's ClassConditionalPipeline (or plain diffusers with
custom_pipeline="pipeline"); with --num_clusters 0, with DDPMPipeline.from_pretrained(output_dir).
"""

import sys

from difftrain import config, trainer
from difftrain.cli import run
from difftrain.unconditional import build_recipe
from difftrain.unconditional_config import UnconditionalConfig


def main(argv: list[str]) -> None:
    cfg = config.parse(UnconditionalConfig, argv, description=__doc__)
    trainer.train(cfg, build_recipe)


if __name__ == "__main__":
    sys.exit(run(main))
