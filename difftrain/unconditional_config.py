"""The schema of train_unconditional.py: every TrainConfig option (config.py), plus class conditioning
(--class_conditional), pixel clusters (--num_clusters), autoguidance (--autoguidance_snapshot) and latent diffusion
(--vae_name_or_path)."""

from __future__ import annotations

from dataclasses import dataclass

from .autoguidance import AUTOGUIDANCE, AUTOGUIDANCE_SNAPSHOT
from .classes import CLASS_GUIDANCE
from .clusters import CLUSTERS, MIN_CLUSTERED_IMAGES
from .config import TrainConfig, _default
from .errors import UserError
from .options import opt


def num_clusters(cfg, num_images: int | None = None) -> int:
    """--num_clusters as resolved: what the user said, else CLUSTERS for an unconditional pixel-space model from
    scratch that asked for no autoguidance, trained on MIN_CLUSTERED_IMAGES or more (when `num_images` is known; a
    fresh default MNIST run: legible digits 88-90 → 95.4 %, README Quality), else 0 (none)."""
    if cfg.num_clusters is not None:
        return cfg.num_clusters
    other = cfg.class_conditional or cfg.pretrained_model_name_or_path or cfg.vae_name_or_path or \
        cfg.autoguidance_snapshot
    small = num_images is not None and num_images < MIN_CLUSTERED_IMAGES
    return 0 if other or small else CLUSTERS


def autoguidance_snapshot(cfg, clusters: int | None = None) -> float:
    """--autoguidance_snapshot as resolved: what the user said, else AUTOGUIDANCE_SNAPSHOT for an unconditional model
    from scratch without pixel clusters (`clusters`: their resolved number, when known; a fresh MNIST run: legible
    digits 74 → 87 %, README Quality), else 0 (none)."""
    if cfg.autoguidance_snapshot is not None:
        return cfg.autoguidance_snapshot
    clusters = num_clusters(cfg) if clusters is None else clusters
    return 0.0 if cfg.class_conditional or cfg.pretrained_model_name_or_path or clusters else AUTOGUIDANCE_SNAPSHOT


@dataclass
class UnconditionalConfig(TrainConfig):
    """train_unconditional.py: every TrainConfig option, plus class conditioning (--class_conditional) and latent
    diffusion (--vae_name_or_path)."""

    class_conditional: bool = opt(False, "Condition on the dataset's class labels (--label_column): a UNet2DModel with "
                                  "one class embedding per class plus 'no class', trained with --label_dropout so "
                                  "classifier-free guidance works; the output loads in difftrain's "
                                  "ClassConditionalPipeline and samples with sample.py --class_label.")
    label_column: str = opt("label", "Class-conditional: the column of class labels (a ClassLabel keeps its names; "
                            "integers or strings are numbered in sorted order).")
    label_dropout: float = opt(0.1, "Class-conditional and pixel clusters: probability of training on 'no class' "
                               "instead of the label.")
    num_clusters: int | None = opt(
        None, "Unconditional: group the training images into this many k-means clusters of their blurred pixels and "
        "train on the cluster ids as classes (no labels read), so sampling draws a cluster in proportion to its size "
        "and guides the image by it (classifier-free guidance, --validation_guidance_scale); 0: a plain DDPMPipeline. "
        f"Unset: {CLUSTERS} from scratch in pixel space on {MIN_CLUSTERED_IMAGES} images or more, unless "
        "--class_conditional or --autoguidance_snapshot; 0 otherwise. The output loads in difftrain's ClassConditionalPipeline: pipe(num_images=4).")
    validation_guidance_scale: float | None = opt(
        None, "The guidance of the sample grids, and sample.py's default for the model: classifier-free guidance of a "
        f"class-conditional or pixel-cluster model (unset: {CLASS_GUIDANCE}), autoguidance of an unconditional one with a guide "
        f"(--autoguidance_snapshot; unset: {AUTOGUIDANCE}).")
    autoguidance_snapshot: float | None = opt(
        None, "Unconditional: the fraction of the run at which the shipping (EMA) weights are kept as guide_unet/, the "
        "weaker version of the model that autoguidance steers away from (sample.py --guidance_scale); 0: none. "
        f"Unset: {AUTOGUIDANCE_SNAPSHOT} from scratch without pixel clusters (--num_clusters 0, or fewer than "
        f"{MIN_CLUSTERED_IMAGES} images), else 0; class and pixel-cluster models have classifier-free guidance instead.")
    eval_classifier: str | None = opt(None, "Class-conditional, with --eval_steps: a classifier folder (evaluate.py "
                                      "train-classifier); logs the fraction of samples of class k read as class k.")
    vae_name_or_path: str | None = opt(
        None, "Train in a frozen VAE's latent space: an AutoencoderKL (folder, Hub id, or pipeline folder with vae/), "
        "a VQModel (folder, or pipeline folder with vqvae/ or vae/; its latents unscaled, as LDM's), or 'mock' "
        "(parameter-free: average-pool by --mock_vae_factor, nearest upsample back; to debug the latent path). The "
        "output loads in difftrain's LatentDiffusionPipeline; an unconditional VQModel run's in diffusers' LDMPipeline.")
    mock_vae_factor: int = opt(2, "--vae_name_or_path mock: its downsampling factor (a power of two).")
    cache_latents: bool = opt(False, "Encode each image with the VAE once (and its mirror image with --random_flip).")

    def validate(self) -> None:
        super().validate()
        if self.mock_vae_factor != _default(type(self), "mock_vae_factor") and self.vae_name_or_path != "mock":
            raise UserError("--mock_vae_factor sets the mock VAE's downsampling; pass --vae_name_or_path mock or drop it.")
        if self.mock_vae_factor < 1 or self.mock_vae_factor & (self.mock_vae_factor - 1):
            raise UserError(f"--mock_vae_factor must be a power of two, 1, 2, 4, ... (got {self.mock_vae_factor}).")
        if self.cache_latents and not self.vae_name_or_path:
            raise UserError("--cache_latents needs a VAE: pass --vae_name_or_path (an AutoencoderKL or VQModel, or mock).")
        snapshot = self.autoguidance_snapshot
        if snapshot is not None and not 0.0 <= snapshot < 1.0:
            raise UserError(f"--autoguidance_snapshot is a fraction of the run, 0 (no guide) to below 1 (got {snapshot}).")
        if snapshot and self.class_conditional:
            raise UserError("--autoguidance_snapshot guides unconditional models; a class model has classifier-free "
                            "guidance (--validation_guidance_scale): drop --autoguidance_snapshot.")
        self.validate_clusters()
        clusters = num_clusters(self)
        if not self.class_conditional:
            class_options = ("label_column", "eval_classifier") + (() if clusters else ("label_dropout",)) + \
                (() if autoguidance_snapshot(self) or clusters else ("validation_guidance_scale",))
            changed = [f"--{n}" for n in class_options if getattr(self, n) != _default(type(self), n)]
            if changed:
                raise UserError(f"{', '.join(changed)} shape(s) a class-conditional model, which --class_conditional "
                                "turns on; pass it or drop them.")
        if not 0.0 <= self.label_dropout < 1.0:
            raise UserError(f"--label_dropout must be in [0, 1) (got {self.label_dropout}).")
        if self.validation_guidance_scale is not None and self.validation_guidance_scale < 0:
            raise UserError(f"--validation_guidance_scale must be 0 or more (got {self.validation_guidance_scale}).")

    def validate_clusters(self) -> None:
        if self.num_clusters is None or self.num_clusters == 0:
            return
        if self.num_clusters < 2:
            raise UserError(f"--num_clusters must be 0 (none) or 2 or more (got {self.num_clusters}).")
        other = ("--class_conditional" if self.class_conditional else
                 "--autoguidance_snapshot" if self.autoguidance_snapshot else
                 "--vae_name_or_path" if self.vae_name_or_path else
                 "--pretrained_model_name_or_path" if self.pretrained_model_name_or_path else None)
        if other:
            raise UserError(f"--num_clusters conditions a pixel-space model from scratch on its own clusters; it does "
                            f"not go with {other}: drop one of them.")
