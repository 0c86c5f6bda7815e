"""The recipe of train_unconditional.py: UNet2DModel + DDPMScheduler on images, saved as a DDPMPipeline; with
--class_conditional (or --num_clusters: the images' own k-means clusters as classes, the default from scratch), a
UNet2DModel with class embeddings trained for classifier-free guidance, saved as a ClassConditionalPipeline; with
--vae_name_or_path, either of them in a frozen VAE's latent space (latents.DenoisingSpace, shared with text-to-image),
saved as a LatentDiffusionPipeline, or as diffusers' LDMPipeline when unconditional in a VQModel's."""

from __future__ import annotations

import torch
from diffusers import DDPMPipeline, LDMPipeline, UNet2DModel, VQModel

from .autoguidance import AUTOGUIDANCE, load_guide, scale_for_sampler
from .classes import CLASS_GUIDANCE, LabelledImages, drop_labels, read_labels
from .clusters import MIN_CLUSTERED_IMAGES, cluster_images, cluster_names, drawn_names
from .config import _default
from .unconditional_config import autoguidance_snapshot, num_clusters
from .data import decode_images, load_source_dataset
from .errors import UserError
from .latents import MOCK, CachedLatents, DenoisingSpace, MockAutoencoder, load_vae, saved_vae
from .models import build_unet, load_pretrained_unet, load_unet_config, noise_scheduler_for
from .objectives import objective_for
from .pipeline_code import write_pipeline_code
from .data import to_uint8
from .pipelines import (ClassConditionalPipeline, LatentDiffusionPipeline, autoguided_predictor, class_predictor,
                        generate, image_grid)
from .schedulers import default_scheduler, scheduler_from_training_config
from .trainer import Recipe
from .utils import DTYPES

DATA_SHAPE_KEYS = ("sample_size", "in_channels", "out_channels")


def unet_architecture(cfg) -> dict:
    """The UNet's config before the data is read, so a bad resolution fails before any decoding."""
    if cfg.pretrained_model_name_or_path:
        return load_unet_config(cfg.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
    if cfg.model_config_name_or_path:  # the file's architecture; size and channels still come from the data
        config = load_unet_config(cfg.model_config_name_or_path, "--model_config_name_or_path")
        return {k: v for k, v in config.items() if k not in DATA_SHAPE_KEYS}
    return cfg.unet


def vae_source(cfg) -> str | None:
    """--vae_name_or_path, else the vae/ (or vqvae/) of the latent run continued with --pretrained_model_name_or_path
    (its UNet denoises those latents), else None: pixel space."""
    pretrained = cfg.pretrained_model_name_or_path
    if cfg.vae_name_or_path or not pretrained:
        return cfg.vae_name_or_path
    folder = saved_vae(pretrained)
    return str(folder) if folder else None


def frozen_vae(source: str | None, cfg):
    """The VAE of a latent run (the mock's channels are the data's: DenoisingSpace.prepare sets them), else None."""
    if not source:
        return None
    if source == MOCK:
        return MockAutoencoder(factor=cfg.mock_vae_factor).eval()
    return load_vae(source, flag="--vae_name_or_path" if cfg.vae_name_or_path else "--pretrained_model_name_or_path")


def make_unet(cfg, architecture: dict, size: int, channels: int, num_classes: int | None) -> UNet2DModel:
    """A fresh UNet (with num_classes + 1 class embeddings for a class model: the last is "no class"), or the
    pretrained one, whose class embeddings must match the data's classes."""
    embeds = num_classes + 1 if num_classes else None
    if cfg.pretrained_model_name_or_path:
        unet = load_pretrained_unet(cfg.pretrained_model_name_or_path)
        if unet.config.get("num_class_embeds") != embeds:
            has = unet.config.get("num_class_embeds") or 0
            wants = f"{embeds} (the data's {num_classes} classes and 'no class')" if embeds else "none (no --class_conditional)"
            raise UserError(f"--pretrained_model_name_or_path {cfg.pretrained_model_name_or_path}: its UNet has {has} "
                            f"class embeddings, this run needs {wants}; continue it with the flags it was trained with.")
        return unet
    if embeds and architecture.get("num_class_embeds", embeds) != embeds:
        raise UserError(f"unet.num_class_embeds is {architecture['num_class_embeds']} but the data has {num_classes} "
                        f"classes (+1 for no class); drop it from the config.")
    extra = {"num_class_embeds": embeds} if embeds else {}
    return build_unet(architecture, resolution=size, channels=channels, **extra)


def build_recipe(cfg, accelerator) -> Recipe:
    architecture = unet_architecture(cfg)
    vae_from = vae_source(cfg)  # the frozen VAE's folder (or mock): read again by save_frozen
    vae = frozen_vae(vae_from, cfg)
    space = DenoisingSpace(cfg, vae, architecture, UNet2DModel)  # a bad resolution fails before any decoding
    device = accelerator.device
    with accelerator.main_process_first():  # rank 0 decodes (and encodes) and caches; the others then read the cache
        source = load_source_dataset(cfg)
        labels, names = read_labels(source, cfg.label_column) if cfg.class_conditional else (None, None)
        dataset = decode_images(cfg, source, space.image_mode)
        clusters = resolved_clusters(cfg, len(dataset))
        labels, names, prior = cluster_labels(cfg, dataset, clusters) if clusters else (labels, names, None)
        space.prepare(dataset, device, DTYPES.get(accelerator.mixed_precision, torch.float32))
    unet = make_unet(cfg, architecture, space.size, channels=space.channels(dataset),
                     num_classes=len(names) if names else None)
    # for EDM: an EDMEulerScheduler, so sampling applies the same scalings; in latent space, no clipping
    scheduler = space.training_scheduler(noise_scheduler_for(cfg))
    objective = objective_for(cfg, scheduler)
    snapshot = autoguidance_snapshot(cfg, clusters)  # unconditional models: autoguided by their earlier selves
    guidance = cfg.validation_guidance_scale if cfg.validation_guidance_scale is not None else \
        CLASS_GUIDANCE if names else AUTOGUIDANCE
    items = CachedLatents(space.latents) if space.latents is not None else dataset
    ldm = isinstance(vae, VQModel) and names is None  # diffusers' own pipeline for it: LDMPipeline (no classes)

    def loss(model, batch):
        labels = {} if names is None else {
            "class_labels": drop_labels(batch["label"].to(device), cfg.label_dropout, null_id=len(names))}
        return objective.loss(lambda x, t: model(x, t, **labels).sample, space.model_input(batch, device))

    grid_sampler = default_scheduler(scheduler.config)
    # autoguidance unasked is for stochastic samplers only (the grids of an EDM or x0 model step deterministically)
    grid_guidance = guidance if names or cfg.validation_guidance_scale is not None else \
        scale_for_sampler(guidance, grid_sampler, scheduler.config)

    def generate_images(model, seeds, prompts=None):  # prompts: class names, for a class model
        sampler = scheduler_from_training_config(grid_sampler, scheduler.config)
        shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        guide = None if names else load_guide(cfg.output_dir, model)  # None (unguided) until the guide exists
        predict = class_predictor(model, prompts, names, guidance)[0] if names else \
            autoguided_predictor(model, guide, grid_guidance, scheduler.config)
        return to_uint8(space.decode(generate(predict, sampler, shape, seeds, cfg.validation_inference_steps, device)))

    def grid(model):  # fixed seeds, so grids from different steps compare; a class model: one column per class
        if names is None:
            return image_grid(generate_images(model, list(range(cfg.eval_batch_size))))
        if prior is not None:  # clusters drawn as sampling draws them
            seeds = list(range(cfg.eval_batch_size))
            return image_grid(generate_images(model, seeds, drawn_names(names, prior, seeds)))
        columns = names[:10]
        shown = [c for _ in range(-(-cfg.eval_batch_size // len(columns))) for c in columns]
        return image_grid(generate_images(model, list(range(len(shown))), shown), cols=len(columns))

    def save_frozen(folder) -> None:
        """vae/ (LDMPipeline's vqvae/), written once at the start so every checkpoint-N/ of the run is samplable at
        once: a real VAE read again from its source in its saved dtype (the training copy may be fp16/bf16)."""
        mock = isinstance(space.vae, MockAutoencoder)  # its config is all there is to save
        (space.vae if mock else load_vae(vae_from)).save_pretrained(folder / ("vqvae" if ldm else "vae"))

    def save_pipeline(model, folder) -> None:
        if vae is not None:  # model_index.json, unet/ and scheduler/; the VAE is on disk since the start
            pipe = LDMPipeline(vqvae=space.vae, unet=model, scheduler=scheduler) if ldm else \
                LatentDiffusionPipeline(unet=model, scheduler=scheduler, vae=space.vae, class_names=names)
            pipe.save_config(str(folder))
            model.save_pretrained(str(folder / "unet"))
            scheduler.save_pretrained(str(folder / "scheduler"))
        elif names is None:
            DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
        else:
            ClassConditionalPipeline(unet=model, scheduler=scheduler, class_names=names,
                                     class_prior=prior).save_pretrained(folder)
            write_pipeline_code("ClassConditionalPipeline", folder)  # so plain diffusers loads it too

    return Recipe(
        model=unet,
        generate=generate_images,
        dataset=items if names is None else LabelledImages(items, labels),
        loss=loss,
        save_pipeline=save_pipeline,
        sample_grid=grid,
        pipeline_class="LDMPipeline" if ldm else "LatentDiffusionPipeline" if vae is not None else
        "DDPMPipeline" if names is None else "ClassConditionalPipeline",
        save_frozen=save_frozen if vae is not None else None,
        scheduler=scheduler,
        eval_prompts=names if prior is None else drawn_names(names, prior, list(range(cfg.eval_num_samples))),
        eval_classifier=cfg.eval_classifier,
        autoguidance_snapshot=snapshot,
        resolved={"prediction_type": scheduler.config.prediction_type, "autoguidance_snapshot": snapshot,
                  **({"image_mode": space.image_mode} if vae is not None else {}),
                  **({"class_names": names} if names else {}),
                  **({"num_clusters": len(prior), "class_prior": prior} if prior is not None else {}),
                  **({"validation_guidance_scale": guidance} if names or snapshot else {})},
    )


def resolved_clusters(cfg, num_images: int) -> int:
    """--num_clusters resolved for the data (num_clusters), refusing a count above the images, and the flags of a
    class model that nothing uses once unset clusters resolve to none (too few images; the config's own check
    assumed enough)."""
    k = num_clusters(cfg, num_images)
    if k > num_images:
        raise UserError(f"--num_clusters {k} is more than the {num_images} training images; pass fewer, or 0.")
    if not k and not cfg.class_conditional:
        unused = ["--label_dropout"] if cfg.label_dropout != _default(type(cfg), "label_dropout") else []
        if cfg.validation_guidance_scale is not None and not autoguidance_snapshot(cfg, clusters=0):
            unused.append("--validation_guidance_scale")
        if unused:
            raise UserError(f"{', '.join(unused)} shape(s) a class-conditional (--class_conditional) or pixel-cluster "
                            f"model, and the {num_images} training images are too few to cluster unasked "
                            f"({MIN_CLUSTERED_IMAGES}): pass --class_conditional or --num_clusters K, or drop them.")
    return k


def cluster_labels(cfg, dataset, k: int) -> tuple[list[int], list[str], list[int]]:
    """The images' k-means clusters as class labels (clusters.py): ids, names, and sizes (what sampling draws by)."""
    ids, sizes = cluster_images(dataset, k, cfg.seed if cfg.seed is not None else 0)
    return ids, cluster_names(k), sizes
