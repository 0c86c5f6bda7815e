#!/usr/bin/env python
"""LoRA fine-tuning of a Stable-Diffusion-format pipeline (or of a text-to-image run of ours), as diffusers'
examples/text_to_image/train_text_to_image_lora.py: rank-4 adapters (peft) on the UNet's attention projections,
everything else frozen.

    accelerate launch train_text_to_image_lora.py --pretrained_model_name_or_path SD_FOLDER_OR_HUB_ID \\
        --dataset_name DATASET --caption_column text --resolution 512 --validation_prompt "a cute dragon"

It is train_text_to_image.py with --rank 4 and --learning_rate 1e-4 by default; `--help` lists every flag.
The output folder holds pytorch_lora_weights.safetensors:
    StableDiffusionPipeline.from_pretrained(BASE).load_lora_weights(output_dir)
    python sample.py --model output_dir --prompt "a cute dragon"
"""

import sys

from difftrain import config, text_config, trainer
from difftrain.cli import run
from difftrain.text_to_image import build_recipe


def main(argv: list[str]) -> None:
    cfg = config.parse(text_config.LoraTextToImageConfig, argv, description=__doc__)
    trainer.train(cfg, build_recipe)


if __name__ == "__main__":
    sys.exit(run(main))
