"""FID, KID (and prompt accuracy) during training, every --eval_steps: the same features, statistics and formulas
as evaluate.py (metrics.py), on samples from the weights the run would ship."""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import metrics, references


class PeriodicEvaluation:
    """generate(model, seeds, prompts or None) → uint8 NCHW images at the training resolution. Image k uses seed k
    and, for text models, prompt k mod P; with a classifier, prompt k's expected class is k mod P (the default
    validation prompts, the ten digits, are in MNIST's label order)."""

    def __init__(self, cfg, generate: Callable, prompts: list[str] | None = None, classifier_path: str | None = None,
                 device=None):
        from .classifier import load_classifier

        self.cfg, self.generate, self.prompts, self.device = cfg, generate, prompts, device
        self.classifier = load_classifier(classifier_path) if classifier_path else None
        self.reference = None  # computed (or read from the cache) at the first evaluation

    def __call__(self, model) -> dict:
        cfg = self.cfg
        if self.reference is None:
            self.reference = references.reference_stats(cfg.dataset_name, cfg.eval_split, cfg.resolution,
                                                     cache_dir=cfg.cache_dir, dataset_config_name=cfg.dataset_config_name,
                                                     image_column=cfg.image_column, device=self.device)
        n, batch, predicted = cfg.eval_num_samples, cfg.eval_batch_size, []

        def chunks():
            for first in range(0, n, batch):
                seeds = list(range(first, min(n, first + batch)))
                prompts = [self.prompts[k % len(self.prompts)] for k in seeds] if self.prompts else None
                images = self.generate(model, seeds, prompts).cpu().numpy()
                if self.classifier is not None:
                    from .classifier import predict

                    predicted.append(predict(self.classifier, images))
                yield images

        stats = metrics.generated_stats(chunks(), device=self.device, total=n, desc="eval features")
        kid_mean, kid_std = metrics.kid(stats, self.reference)
        logs = {"eval/fid": metrics.fid(stats, self.reference), "eval/kid": kid_mean, "eval/kid_std": kid_std}
        if predicted:
            expected = np.arange(n) % len(self.prompts)
            logs["eval/prompt_accuracy"] = float((np.concatenate(predicted) == expected).mean())
        return logs
