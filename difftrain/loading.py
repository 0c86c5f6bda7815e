"""A trained model, loaded for sampling: a pipeline folder, a checkpoint-N/ folder or a Hub id, with the training
scheduler config it was saved with, its frozen text encoder and VAE, and the guidance its run sampled at. Reads saved
files only, never training code."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from diffusers import UNet2DConditionModel, UNet2DModel

from .autoguidance import AUTOGUIDANCE, AUTOGUIDANCE_STEPS, load_guide, scale_for_sampler
from .classes import CLASS_GUIDANCE
from .errors import UserError
from .lora import WEIGHT_NAME as LORA_FILE
from .lora import apply as apply_lora, weights_folder as lora_weights_folder
from .utils import first_line

UNET_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["model_index.json", "unet/*", "scheduler/*", "text_encoder/*", "tokenizer/*", "vae/*", "vqvae/*"]


@dataclass
class Model:
    """What sampling needs from a trained model, wherever it came from."""

    unet: torch.nn.Module
    scheduler_config: dict  # the TRAINING scheduler config: every sampler is built from it
    path: Path  # the local folder the weights were read from
    weights: str  # "unet" or "unet_ema"
    samples_dir: Path  # where output folders go by default
    encode_prompts: Callable[[list[str]], torch.Tensor] | None = None  # text models: prompts → hidden states
    vae: torch.nn.Module | None = None  # latent models: the AutoencoderKL, VQModel or mock: images ↔ latents
    guidance_scale: float | None = None  # guided models: the scale its run sampled its grids at
    class_names: list[str] | None = None  # class-conditional models: what --class_label names
    class_prior: list[int] | None = None  # pixel-cluster models: each cluster's training size, what sampling draws by
    guide: torch.nn.Module | None = None  # unconditional models with guide_unet/: what autoguidance steers from

    @property
    def conditional(self) -> bool:
        return isinstance(self.unet, UNet2DConditionModel) or self.class_names is not None

    @property
    def guidable(self) -> bool:
        """Takes --guidance_scale: classifier-free guidance of a conditional model, autoguidance with a guide."""
        return self.conditional or self.guide is not None

    @property
    def condition_key(self) -> str:
        """The UNet argument the encoded prompts or class ids go to."""
        return "class_labels" if self.class_names is not None else "encoder_hidden_states"

    @property
    def masked_image_input(self) -> bool:
        """A Stable Diffusion inpainting UNet: the latents, the mask and the masked image's latents in."""
        return self.unet.config.in_channels != self.unet.config.out_channels  # _load_unet lets only those through

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """What the UNet denoises: images, or a latent model's latents (what it predicts: an inpainting UNet's input
        has more channels)."""
        from .pipelines import sample_shape

        return (self.unet.config.out_channels, *sample_shape(self.unet)[1:])

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """The images it makes (a latent model's decoded latents)."""
        c, h, w = self.image_shape
        if self.vae is None:
            return c, h, w
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.in_channels, h * factor, w * factor

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised samples → images in [-1, 1]."""
        from .latents import decode

        return decode(self.vae, x) if self.vae is not None else x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → what the UNet denoises (a latent model: the mean latent, in the UNet's units)."""
        from .latents import encode_mean

        return encode_mean(self.vae, images) if self.vae is not None else images


@contextlib.contextmanager
def _quiet_diffusers():
    """EMA folders carry the EMA's own settings in config.json; diffusers warns that it ignores them."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def local_folder(model: str) -> Path:
    """--model as a local folder: itself, or the Hub snapshot (cached, or downloaded when online)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"--model {model} is a file; pass a pipeline folder, a checkpoint-N folder or a Hub id.")
    if not HUB_ID.match(model):
        raise UserError(f"--model {model}: no such folder; pass a training run's output_dir, one of its "
                        "checkpoint-N folders, or a Hub id (user/name).")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated, network down: all end the same way
        why = ("HF_HUB_OFFLINE is set and it is not in the Hub cache" if constants.HF_HUB_OFFLINE
               else f"{e.__class__.__name__}: {first_line(e)}")
        raise UserError(f"--model {model}: not a local folder, and the Hub could not provide it ({why}); "
                        "pass a local pipeline or checkpoint-N folder, or retry online.") from None


def _load_unet(folder: Path, dtype: torch.dtype, inpainting: bool = False):
    try:
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: no readable config.json ({first_line(e)}).") from None
    if class_name not in UNET_CLASSES:
        raise UserError(f"{folder} holds a {class_name}; sample.py samples {' and '.join(UNET_CLASSES)} models.")
    try:
        with _quiet_diffusers():
            unet = UNET_CLASSES[class_name].from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as e:
        raise UserError(f"{folder}: cannot load the UNet weights ({first_line(e)}).") from None
    if isinstance(unet, UNet2DModel) and unet.config.get("class_embed_type"):
        raise UserError(f"{folder}: a UNet2DModel with class_embed_type {unet.config.class_embed_type}; sample.py "
                        "samples class models with num_class_embeds (train_unconditional.py --class_conditional).")
    channels_in, channels_out = unet.config.in_channels, unet.config.out_channels
    stable_diffusion_inpainting = isinstance(unet, UNet2DConditionModel) and channels_in == 2 * channels_out + 1
    if channels_in != channels_out and not stable_diffusion_inpainting:
        raise UserError(f"{folder}: a UNet taking {channels_in} channels and predicting {channels_out}; sample.py "
                        "drives an inpainting UNet with masked-image input only as Stable Diffusion's (a "
                        "UNet2DConditionModel taking latents, mask and masked-image latents: 2 × 4 + 1 channels).")
    if channels_in != channels_out and not inpainting:
        raise UserError(f"{folder}: an inpainting UNet with masked-image input ({channels_in} channels: latents, mask, "
                        "masked-image latents) only repaints: sample.py --init_image IMAGE --mask_image MASK.")
    return unet


def _saved_class_entry(folder: Path, run: Path, key: str):
    """`key` of a class model's pipeline (model_index.json), else of its run's training_config.yaml (a checkpoint)."""
    index = folder / "model_index.json"
    value = json.loads(index.read_text()).get(key) if index.is_file() else None
    return value or run_config(run).get(key)


def _class_names(unet, folder: Path, run: Path) -> list[str] | None:
    """A class model's class names: as saved (_saved_class_entry), else their ids; None for any other model. The last
    class embedding is "no class"."""
    if not isinstance(unet, UNet2DModel) or not unet.config.get("num_class_embeds"):
        return None
    names = _saved_class_entry(folder, run, "class_names")
    return [str(n) for n in names] if names else [str(k) for k in range(unet.config.num_class_embeds - 1)]


def training_scheduler_config(folder: Path) -> dict:
    """The TRAINING scheduler config saved in folder/scheduler/ (a run folder holds it from its first step, a
    checkpoint-N/ holds its own): every sampler is built from it."""
    saved = folder / "scheduler" / "scheduler_config.json"
    if not saved.is_file():
        raise UserError(f"{folder}: no scheduler/scheduler_config.json, so the training noise schedule is unknown; "
                        "pass a training run's output_dir or one of its checkpoint-N folders.")
    try:
        return dict(json.loads(saved.read_text()))
    except (OSError, ValueError) as e:
        raise UserError(f"{saved}: not a readable scheduler config ({first_line(e)}).") from None


def _prompt_encoder(folder: Path, device, dtype) -> Callable | None:
    """prompts → encoder hidden states, from the text_encoder/ and tokenizer/ saved beside the UNet, encoded
    exactly as the text-to-image trainer encodes captions."""
    if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
        return None
    from .text import TextEncoder

    encoder = TextEncoder.load(str(folder), tokenizer_subfolder="tokenizer", text_encoder_subfolder="text_encoder",
                               flag="--model").to(device, dtype)
    return encoder.encode


def _latent_vae(folder: Path, device, dtype):
    """The vae/ (or LDMPipeline's vqvae/) saved beside the UNet (latent-space models only), else None: an
    AutoencoderKL, a VQModel, or the MockAutoencoder of a `--vae_name_or_path mock` run (load_vae reads which from
    its config.json)."""
    from .latents import load_vae, saved_vae

    vae = saved_vae(folder)
    return load_vae(str(vae), flag="--model").to(device, dtype) if vae else None


def load_model(model: str, *, use_ema: bool = True, device="cpu", dtype: torch.dtype = torch.float32,
               lora: str | None = None, lora_scale: float = 1.0, inpainting: bool = False) -> Model:
    """A pipeline folder (model_index.json + unet/ + scheduler/), a checkpoint-N/ folder (unet/, and unet_ema/ when
    trained with EMA, and scheduler/; the frozen text encoder and VAE come from the run folder around it), a LoRA
    run or checkpoint (its base named in training_config.yaml), or a Hub id; `lora`: a LoRA folder applied on top.
    A Stable Diffusion inpainting UNet (masked-image input) loads only when `inpainting` (a --mask_image is given)."""
    folder = local_folder(model)
    if (folder / LORA_FILE).is_file() and not (folder / "unet").is_dir():
        return _load_lora_run(folder, use_ema=use_ema, device=device, dtype=dtype, scale=lora_scale)
    if (folder / "model_index.json").is_file():
        if not (folder / "unet").is_dir():
            raise UserError(f"--model {model}: model_index.json but no unet/; sample.py samples UNet pipelines.")
        run, weights, samples_dir = folder, "unet", folder / "samples"
        if not Path(model).is_dir():  # a Hub snapshot: write beside the caller, not into the cache
            samples_dir = Path(model.split("/")[-1]) / "samples"
    elif (folder / "unet").is_dir():  # a checkpoint
        run = folder.parent
        weights = "unet_ema" if use_ema and (folder / "unet_ema").is_dir() else "unet"
        suffix = "-no_ema" if weights == "unet" and (folder / "unet_ema").is_dir() else ""
        samples_dir = folder.parent / "samples" / f"{folder.name}{suffix}"
    else:
        raise UserError(f"--model {model}: neither a pipeline folder (no model_index.json) nor a checkpoint "
                        "(no unet/); pass a training run's output_dir or one of its checkpoint-N folders.")
    unet = _load_unet(folder / weights, dtype, inpainting).to(device).eval()
    scheduler_folder = folder if (folder / "scheduler").is_dir() else run  # checkpoints before this version: the run's
    loaded = Model(unet=unet, scheduler_config=training_scheduler_config(scheduler_folder), path=folder.resolve(),
                   weights=weights, samples_dir=samples_dir, encode_prompts=_prompt_encoder(run, device, dtype),
                   vae=_latent_vae(run, device, dtype), guidance_scale=_trained_guidance(run),
                   class_names=(names := _class_names(unet, folder, run)),
                   class_prior=_saved_class_entry(folder, run, "class_prior") if names is not None else None,
                   # a pipeline folder's guide; a checkpoint-N/ may predate its run's guide, so it samples unguided
                   guide=load_guide(folder, unet) if folder == run else None)
    if loaded.class_names is not None:  # names → class ids; "" (the unconditional half of guidance) → "no class"
        from .classes import label_ids

        names = loaded.class_names
        loaded.encode_prompts = lambda labels: torch.tensor(label_ids(labels, names), device=device)
    if lora:
        lora_folder, lora_weights, _ = lora_weights_folder(local_folder(lora), use_ema)
        apply_lora(loaded.unet, lora_folder, lora_scale)
        loaded.weights = f"{weights}+{lora_weights}"
    elif lora_scale != 1.0:
        raise UserError(f"--lora_scale {lora_scale}: --model {model} has no LoRA; pass --lora DIR or drop it.")
    return loaded


def _load_lora_run(folder: Path, *, use_ema: bool, device, dtype, scale: float) -> Model:
    """A LoRA run folder or checkpoint: its base (training_config.yaml), its training scheduler, its adapters."""
    lora_folder, lora_weights, run = lora_weights_folder(folder, use_ema)
    base = run_config(run).get("pretrained_model_name_or_path")
    if not base:
        raise UserError(f"--model {folder}: LoRA weights without a training_config.yaml naming their base; pass "
                        f"--model BASE --lora {folder}.")
    loaded = load_model(str(base), use_ema=use_ema, device=device, dtype=dtype)
    apply_lora(loaded.unet, lora_folder, scale)
    loaded.weights = f"{loaded.weights}+{lora_weights}"
    loaded.path = folder.resolve()
    loaded.samples_dir = run / "samples" / (folder.name if run != folder else "")
    if (run / "scheduler").is_dir():  # the scheduler trained with (a --prediction_type change, for one)
        loaded.scheduler_config = training_scheduler_config(run)
    loaded.guidance_scale = _trained_guidance(run)
    return loaded


def run_config(run: Path) -> dict:
    """The run's training_config.yaml as a mapping ({} when there is none); a broken one is named, not --config."""
    path = run / "training_config.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not readable YAML ({first_line(e)}); restore it from the run or delete it.") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: not a mapping of option: value; restore it from the run or delete it.")
    return values


def _trained_guidance(run: Path) -> float | None:
    """The guidance scale the run drew its grids at: what the model was trained to be sampled with."""
    value = run_config(run).get("validation_guidance_scale")  # as the run resolved it
    return float(value) if isinstance(value, (int, float)) else None


def resolve_guidance(model: Model, requested: float | None, sampler: str, eta: float = 0.0) -> float:
    """--guidance_scale as given, else the model's own (its run's --validation_guidance_scale), else SD's 7.5
    (CLASS_GUIDANCE for a class model, AUTOGUIDANCE for an unconditional one with a guide). Autoguidance unasked is
    for stochastic samplers only: a deterministic one (ddim, dpm++2m, unipc, ...) samples unguided."""
    if requested is not None:
        return requested
    if model.guide is not None and not model.conditional:
        trained = AUTOGUIDANCE if model.guidance_scale is None else model.guidance_scale
        return scale_for_sampler(trained, sampler, model.scheduler_config, eta)
    if model.guidance_scale is not None:
        return model.guidance_scale
    if model.class_names is not None:
        return CLASS_GUIDANCE
    return 7.5


DEFAULT_STEPS = 50  # sampling steps unless told, but for autoguidance (AUTOGUIDANCE_STEPS)


def resolve_steps(model: Model, requested: int | None, sampler: str, eta: float = 0.0) -> int:
    """--num_inference_steps as given, else AUTOGUIDANCE_STEPS where autoguidance is on unasked (an unconditional
    model with a guide and a stochastic sampler, resolve_guidance), else DEFAULT_STEPS."""
    if requested is not None:
        return requested
    autoguided = model.guide is not None and not model.conditional and \
        resolve_guidance(model, None, sampler, eta) != 1.0
    return AUTOGUIDANCE_STEPS if autoguided else DEFAULT_STEPS
