"""The text-to-image recipe: a UNet2DConditionModel on captioned images, conditioned on a FROZEN text encoder,
in pixel space or a frozen VAE's latent space. From scratch it writes a TextToImagePipeline folder; fine-tuning a
Stable-Diffusion-format pipeline it writes a StableDiffusionPipeline folder whose scheduler is the one trained with.

Speed: the text encoder runs once per unique caption (CaptionEmbeddings, cached on disk); with --cache_latents
the VAE runs once per image (and once per mirror image with --random_flip)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import UNet2DConditionModel, VQModel

from .data import decode_images, load_source_dataset, to_uint8
from .data.captions import EMPTY, caption_candidates, default_validation_prompts, index_captions, pick_captions
from .config import grid_guidance, uses_ema
from . import lora
from .errors import UserError
from .latents import DenoisingSpace, load_vae, outside_zero_init
from .models import build_unet, load_pretrained_unet, load_unet_config, noise_scheduler_for
from .objectives import objective_for
from .pipelines import generate, guided_predictor, image_grid
from .schedulers import default_scheduler, scheduler_from_training_config
from .text import CaptionEmbeddings, TextEncoder, default_text_encoder_path, text_cache_root
from .trainer import Recipe
from .utils import DTYPES

SD_COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "vae", "unet")


@dataclass
class Sources:
    """Where each frozen component comes from: read again, in its saved dtype, when the pipeline is written."""

    text_encoder: tuple[str, str | None, str | None]  # (path, tokenizer subfolder, text_encoder subfolder)
    vae: str | None
    pipeline_class: str  # "TextToImagePipeline" or "StableDiffusionPipeline"


def resolve_sources(cfg) -> Sources:
    """Which folders hold the text encoder and VAE; a pretrained pipeline missing a component names it."""
    pretrained = cfg.pretrained_model_name_or_path
    ours, has_vae = True, False  # from scratch: a TextToImagePipeline, pixel space unless --vae_name_or_path
    if pretrained:
        root = Path(pretrained)
        ours, has_vae = False, True  # a Hub id: Stable Diffusion layout
        if root.is_dir():
            index = root / "model_index.json"
            ours = index.is_file() and json.loads(index.read_text()).get("_class_name") == "TextToImagePipeline"
            needs = ("scheduler", "tokenizer", "text_encoder", "unet") if ours else SD_COMPONENTS
            missing = [c for c in needs if not (root / c).is_dir()]
            if missing:
                raise UserError(f"--pretrained_model_name_or_path {pretrained}: no {', '.join(m + '/' for m in missing)} "
                                f"folder; a Stable-Diffusion-format pipeline has {', '.join(SD_COMPONENTS)}.")
            has_vae = (root / "vae").is_dir()
    if cfg.text_encoder_name_or_path:
        text = (cfg.text_encoder_name_or_path, None, None)
    elif pretrained:
        text = (pretrained, "tokenizer", "text_encoder")
    else:
        text = (default_text_encoder_path(), None, None)
    vae = cfg.vae_name_or_path or (pretrained if has_vae else None)
    return Sources(text, vae, "TextToImagePipeline" if ours else "StableDiffusionPipeline")


def load_text_encoder(cfg, sources: Sources) -> TextEncoder:
    path, tok_sub, enc_sub = sources.text_encoder
    flag = "--text_encoder_name_or_path" if cfg.text_encoder_name_or_path or not tok_sub else \
        "--pretrained_model_name_or_path"
    with outside_zero_init():  # frozen: whole on every rank under ZeRO-3
        return TextEncoder.load(path, tokenizer_subfolder=tok_sub, text_encoder_subfolder=enc_sub, flag=flag,
                                revision=cfg.revision if tok_sub else None)


def make_unet(cfg, encoder: TextEncoder, resolution: int, channels: int) -> UNet2DConditionModel:
    if cfg.pretrained_model_name_or_path:
        # diffusers' --non_ema_revision: the weights to train come from that revision (the EMA from --revision's)
        unet = load_pretrained_unet(cfg.pretrained_model_name_or_path, UNet2DConditionModel,
                                    cfg.non_ema_revision or cfg.revision, cfg.variant)
        if unet.config.cross_attention_dim != encoder.width:
            raise UserError(f"the UNet's cross_attention_dim is {unet.config.cross_attention_dim} but the text encoder "
                            f"gives {encoder.width}-wide states; pick a matching --text_encoder_name_or_path.")
        return unet
    architecture = cfg.unet
    if cfg.model_config_name_or_path:
        architecture = {k: v for k, v in load_unet_config(cfg.model_config_name_or_path, "--model_config_name_or_path",
                                                          UNet2DConditionModel).items()
                        if k not in ("sample_size", "in_channels", "out_channels", "cross_attention_dim")}
    unet = build_unet(architecture, resolution=resolution, channels=channels, model_cls=UNet2DConditionModel,
                      cross_attention_dim=encoder.width)
    c = unet.config
    blocks = [*c.down_block_types, *c.up_block_types, c.mid_block_type or ""]
    if not any("CrossAttn" in b for b in blocks) and c.addition_embed_type != "text":
        raise UserError("--unet has no cross-attention block (CrossAttnDownBlock2D, CrossAttnUpBlock2D or the "
                        "UNetMidBlock2DCrossAttn middle) and no addition_embed_type: text, so it could not see the "
                        "caption; add one.")
    return unet


class CaptionedImages(torch.utils.data.Dataset):
    """Items {"pixels": uint8 CHW} or {"latents": the cached distributions}, plus {"caption_ids": [ids]}."""

    def __init__(self, images, caption_ids: list[list[int]], latents: np.ndarray | None = None):
        self.images, self.caption_ids, self.latents = images, caption_ids, latents

    def __len__(self) -> int:
        return len(self.caption_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"latents": np.asarray(self.latents[i])} if self.latents is not None else dict(self.images[i])
        return {**item, "caption_ids": self.caption_ids[i]}


def _add_lora(cfg, unet, weight_dtype) -> None:
    lora.add_adapter(unet, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.lora_target_modules)
    if weight_dtype != torch.float32:  # as diffusers' script: the frozen base in the autocast dtype (half the
        from diffusers.training_utils import cast_training_params  # memory), the adapters trained in fp32

        unet.to(dtype=weight_dtype)
        cast_training_params(unet, dtype=torch.float32)


def _pipeline_writers(cfg, sources, vae, encoder, scheduler) -> tuple[Callable, Callable]:
    """(save_frozen, save_pipeline) of a text-to-image run."""

    def save_frozen(folder: Path) -> None:
        """The frozen components, read again from their source in their saved dtype (the training copies may be
        fp16/bf16), written once at the start so every checkpoint-N/ of the run is samplable at once."""
        fresh = load_text_encoder(cfg, sources)
        fresh.model.save_pretrained(folder / "text_encoder")
        fresh.tokenizer.save_pretrained(folder / "tokenizer")
        if sources.vae:
            load_vae(sources.vae, revision=None if cfg.vae_name_or_path else cfg.revision).save_pretrained(folder / "vae")

    def save_pipeline(model, folder: Path) -> None:
        """model_index.json, unet/ and scheduler/ (the TRAINING scheduler, prediction_type included), and for our
        own pipeline its code (pipeline.py, for plain diffusers); a LoRA run's adapters only (the run folder's
        scheduler/ and training_config.yaml name the rest)."""
        from diffusers import StableDiffusionPipeline

        from .pipeline_code import write_pipeline_code
        from .pipelines import TextToImagePipeline

        if cfg.rank is not None:
            lora.save(model, folder)
            return
        if sources.pipeline_class == "StableDiffusionPipeline":
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder.model, tokenizer=encoder.tokenizer, unet=model,
                                           scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            pipe = TextToImagePipeline(unet=model, text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                                       scheduler=scheduler, vae=vae)
            write_pipeline_code("TextToImagePipeline", folder)
        pipe.save_config(str(folder))  # model_index.json; the frozen components are on disk since the start
        model.save_pretrained(str(folder / "unet"))
        scheduler.save_pretrained(str(folder / "scheduler"))

    return save_frozen, save_pipeline


def build_recipe(cfg, accelerator) -> Recipe:
    device = accelerator.device
    weight_dtype = DTYPES.get(accelerator.mixed_precision, torch.float32)
    sources = resolve_sources(cfg)
    encoder = load_text_encoder(cfg, sources)
    vae = load_vae(sources.vae, flag="--vae_name_or_path" if cfg.vae_name_or_path else
                   "--pretrained_model_name_or_path", revision=None if cfg.vae_name_or_path else cfg.revision) \
        if sources.vae else None
    if isinstance(vae, VQModel):  # Stable Diffusion's pipelines and ours take an AutoencoderKL here
        raise UserError(f"{sources.vae} holds a VQModel; text-to-image trains in an AutoencoderKL's latent space "
                        "(a VQModel's: train_unconditional.py --vae_name_or_path).")
    if cfg.pretrained_model_name_or_path:
        architecture = load_unet_config(cfg.pretrained_model_name_or_path, "--pretrained_model_name_or_path",
                                        UNet2DConditionModel)
    else:
        architecture = cfg.unet
    space = DenoisingSpace(cfg, vae, architecture, UNet2DConditionModel)  # pixels, or the VAE's latents
    size, image_mode = space.size, space.image_mode

    with accelerator.main_process_first():  # rank 0 decodes, encodes and caches; the others read the caches
        source = load_source_dataset(cfg)
        rows = caption_candidates(source, cfg.caption_column)
        builtin = None if cfg.train_data_dir else cfg.dataset_name
        prompts = cfg.validation_prompts or default_validation_prompts(builtin, rows)
        captions, caption_ids = index_captions(rows, prompts)
        images = decode_images(cfg, source, image_mode)
        encoder.to(device, weight_dtype)
        table = CaptionEmbeddings.build(encoder, captions, text_cache_root(cfg.cache_dir), dtype=weight_dtype,
                                        device=device)
        encoder.to("cpu")  # every caption is in the table: the encoder is not needed on the device any more
        space.prepare(images, device, weight_dtype)  # the VAE on the device; --cache_latents encodes here
    channels = space.channels(images)
    unet = make_unet(cfg, encoder, size, channels)
    if cfg.rank is not None:  # the base frozen, adapters trained
        _add_lora(cfg, unet, weight_dtype)
    scheduler = space.training_scheduler(noise_scheduler_for(cfg))  # latent space: clip_sample off
    objective = objective_for(cfg, scheduler)

    def loss(model, batch):
        context = table.lookup(pick_captions(batch["caption_ids"], cfg.caption_dropout)).float()
        return objective.loss(lambda x, t: model(x, t, encoder_hidden_states=context).sample,
                              space.model_input(batch, device))

    guidance = grid_guidance(cfg.validation_guidance_scale, cfg.pretrained_model_name_or_path)
    per_prompt = cfg.num_validation_images or -(-cfg.eval_batch_size // len(prompts))  # a column per prompt

    def generate_images(model, seeds, prompts):
        sampler = scheduler_from_training_config(default_scheduler(scheduler.config), scheduler.config)
        cond = table.embed(prompts).float()
        predict = guided_predictor(model, cond, table.lookup([EMPTY] * len(cond)).float(), guidance)
        x = generate(predict, sampler, (channels, size, size), seeds, cfg.validation_inference_steps, device)
        return to_uint8(space.decode(x))

    def grid(model):  # one column per validation prompt, fixed seeds: grids from different steps compare
        grid_prompts = [p for _ in range(per_prompt) for p in prompts]
        return image_grid(generate_images(model, list(range(len(grid_prompts))), grid_prompts), cols=len(prompts))

    save_frozen, save_pipeline = _pipeline_writers(cfg, sources, vae, encoder, scheduler)

    return Recipe(model=unet, dataset=CaptionedImages(images, caption_ids, space.latents), loss=loss,
                  save_pipeline=save_pipeline, sample_grid=grid, pipeline_class=sources.pipeline_class,
                  save_frozen=None if cfg.rank is not None else save_frozen, generate=generate_images, eval_prompts=prompts, scheduler=scheduler,
                  eval_classifier=cfg.eval_classifier,
                  ema_start=load_pretrained_unet(cfg.pretrained_model_name_or_path, UNet2DConditionModel, cfg.revision,
                                                 cfg.variant) if cfg.non_ema_revision and uses_ema(cfg) else None,
                  resolved={"prediction_type": scheduler.config.prediction_type, "image_mode": image_mode,
                            "validation_prompts": prompts, "validation_guidance_scale": guidance})
