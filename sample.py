#!/usr/bin/env python
"""Generate images from a trained model with any diffusers scheduler.

    python sample.py --model ddpm-mnist --scheduler ddim --num_inference_steps 50 --num_images 64 --seed 0

--model is a pipeline folder written by a trainer, a checkpoint-N/ folder (EMA weights unless --no_ema) or a Hub id.
Writes one PNG per image (or --output_type npz), grid.png, metadata.jsonl (one line per image: seed, scheduler,
settings, versions and the command that regenerates it) and scheduler_config.json into --output_dir (default:
MODEL/samples/<scheduler>-<steps>/). Image k comes from seed + k alone, whatever --batch_size.
`--scheduler all` writes comparison.png (one row per scheduler, same seeds) and timings.csv instead.
`--list_schedulers` prints the scheduler names.
"""

import sys

from difftrain import config, inference_config, sampling
from difftrain.cli import run


def main(argv: list[str]) -> None:
    cfg = config.parse(inference_config.SampleConfig, argv, description=__doc__)
    sampling.sample(cfg)


if __name__ == "__main__":
    sys.exit(run(main))
