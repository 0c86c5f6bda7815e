"""The unconditional recipe: UNet2DModel + DDPMScheduler on images, saved as a DDPMPipeline."""

from __future__ import annotations

from diffusers import DDPMPipeline, UNet2DModel

from .data import augment, load_training_images
from .models import build_unet, check_resolution, load_pretrained_unet, load_unet_config, noise_scheduler_for
from .objectives import objective_for
from .data import to_uint8
from .pipelines import generate, image_grid, unet_predictor
from .schedulers import default_scheduler, scheduler_from_training_config
from .trainer import Recipe

DATA_SHAPE_KEYS = ("sample_size", "in_channels", "out_channels")


def unet_architecture(cfg) -> dict:
    """The UNet's config before the data is read, so a bad resolution fails before any decoding."""
    if cfg.pretrained_model_name_or_path:
        return load_unet_config(cfg.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
    if cfg.model_config_name_or_path:  # the file's architecture; size and channels still come from the data
        config = load_unet_config(cfg.model_config_name_or_path, "--model_config_name_or_path")
        return {k: v for k, v in config.items() if k not in DATA_SHAPE_KEYS}
    return cfg.unet


def make_unet(cfg, architecture: dict, channels: int) -> UNet2DModel:
    if cfg.pretrained_model_name_or_path:
        return load_pretrained_unet(cfg.pretrained_model_name_or_path)
    return build_unet(architecture, resolution=cfg.resolution, channels=channels)


def build_recipe(cfg, accelerator) -> Recipe:
    architecture = unet_architecture(cfg)
    check_resolution(cfg.resolution, architecture)
    with accelerator.main_process_first():  # rank 0 decodes and caches; the others then read the cache
        dataset = load_training_images(cfg)
    unet = make_unet(cfg, architecture, channels=dataset[0]["pixels"].shape[0])
    scheduler = noise_scheduler_for(cfg)  # for EDM: an EDMEulerScheduler, so sampling applies the same scalings
    objective = objective_for(cfg, scheduler)

    def loss(model, batch):
        x0 = augment(batch["pixels"], cfg.resolution, random_flip=cfg.random_flip, device=accelerator.device)
        return objective.loss(lambda x, t: model(x, t).sample, x0)

    def generate_images(model, seeds, prompts=None):
        sampler = scheduler_from_training_config(default_scheduler(scheduler.config), scheduler.config)
        param = next(model.parameters())
        shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        return to_uint8(generate(unet_predictor(model), sampler, shape, seeds, cfg.validation_inference_steps,
                                 param.device))

    return Recipe(
        model=unet,
        generate=generate_images,
        dataset=dataset,
        loss=loss,
        save_pipeline=lambda model, folder: DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder),
        # samples from fixed seeds (the default sampler's: euler_a; euler for EDM), so grids from different steps compare
        sample_grid=lambda model: image_grid(generate_images(model, list(range(cfg.eval_batch_size)))),
        pipeline_class="DDPMPipeline",
        scheduler=scheduler,
        resolved={"prediction_type": scheduler.config.prediction_type},
    )
