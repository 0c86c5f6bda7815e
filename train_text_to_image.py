#!/usr/bin/env python
"""Train a text-to-image diffusion model (UNet2DConditionModel conditioned on a frozen text encoder).

    accelerate launch train_text_to_image.py                      # from scratch on built-in captioned MNIST, offline
    accelerate launch train_text_to_image.py --pretrained_model_name_or_path SD_FOLDER_OR_HUB_ID \\
        --dataset_name DATASET --caption_column text --resolution 512 ...      # fine-tune Stable Diffusion

Flags are those of diffusers' examples/text_to_image/train_text_to_image.py; `--help` lists them all.
From scratch the output folder loads with difftrain.pipelines.TextToImagePipeline.from_pretrained(output_dir);
a fine-tuned Stable Diffusion with StableDiffusionPipeline.from_pretrained(output_dir). sample.py takes both.
"""

import sys

from difftrain import config, text_config, trainer
from difftrain.cli import run
from difftrain.text_to_image import build_recipe


def main(argv: list[str]) -> None:
    cfg = config.parse(text_config.TextToImageConfig, argv, description=__doc__)
    trainer.train(cfg, build_recipe)


if __name__ == "__main__":
    sys.exit(run(main))
