#!/usr/bin/env python
"""FID, KID and prompt accuracy of a trained model, offline.

    python evaluate.py --model ddpm-mnist --dataset mnist --num_samples 10000 --scheduler dpm++2m --num_inference_steps 20

Generates --num_samples images (image k from seed + k; streamed: features accumulate, images are not kept), scores
them against the dataset's --split (test) with the standard Inception features, and writes metrics.json into
--output_dir (default MODEL/eval/<scheduler>-<steps>/). Reference statistics are computed once per
(dataset, split, resolution) and cached; --ref_stats PATH uses or writes one file.
--samples_dir scores images made elsewhere (a folder of PNGs, or sample.py's samples.npz).
--sweep scores each scheduler × steps: sweep.csv and sweep.png (FID against network calls per image).
--classifier PATH (text-conditional models): the fraction of images the classifier reads as the digit the prompt
names, per digit and overall. Make the classifier with:

    python evaluate.py train-classifier --dataset mnist --output_dir classifier-mnist
"""

import sys

from difftrain import classifier, config, evaluation, inference_config
from difftrain.cli import run

SUBCOMMANDS = {"train-classifier": (inference_config.ClassifierConfig, classifier.train_classifier_command)}


def main(argv: list[str]) -> None:
    if argv and argv[0] in SUBCOMMANDS:
        cls, command = SUBCOMMANDS[argv[0]]
        command(config.parse(cls, argv[1:], description=f"evaluate.py {argv[0]}: {cls.__doc__}"))
        return
    evaluation.evaluate(config.parse(inference_config.EvaluateConfig, argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(run(main))
