"""LoRA on peft, as diffusers' train_text_to_image_lora.py does it: the UNet frozen, low-rank adapters on its
attention projections trained, and `pytorch_lora_weights.safetensors` written in diffusers' format so
`StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)` loads it."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .utils import first_line

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
SD_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # Stable Diffusion's attention projections
ADAPTER = "default"


def add_adapter(unet: torch.nn.Module, *, rank: int, alpha: float | None, dropout: float,
                target_modules: list[str]) -> None:
    """Freeze every base weight and add trainable rank-`rank` adapters on `target_modules` (alpha unset: the rank,
    so the update is scaled by 1 as in diffusers' script)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        init_lora_weights="gaussian", target_modules=list(target_modules))
    try:
        unet.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as e:  # no module matched
        raise UserError(f"--lora_target_modules {' '.join(target_modules)}: {first_line(e)} Name attention "
                        "projections such as to_q to_k to_v to_out.0.") from None


def has_adapters(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def adapter_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors, keyed as diffusers' LoRA files key them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))


def save(unet: torch.nn.Module, folder: Path) -> None:
    """folder/pytorch_lora_weights.safetensors, with the adapter config (rank, alpha, targets) as metadata so a loader
    scales the update as it was trained."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder), unet_lora_layers=adapter_state_dict(unet), safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config[ADAPTER].to_dict())


def load_into(unet: torch.nn.Module, folder: Path) -> None:
    """Put the adapter weights saved in folder back into a UNet that has the same adapters (resuming)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
    state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()
                                             if k.startswith("unet.")})
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise UserError(f"{folder}: its LoRA weights do not fit this run's adapters ({missing[0]} ...); resume with "
                        "the --rank and --lora_target_modules it was trained with.")


def weights_folder(folder: Path, use_ema: bool) -> tuple[Path, str, Path]:
    """Sampling: (folder holding the LoRA file to use, its name for the metadata, the run folder) of a LoRA run or
    checkpoint: a checkpoint's ema/ adapters unless --no_ema."""
    if not (folder / WEIGHT_NAME).is_file():
        raise UserError(f"--lora {folder}: no {WEIGHT_NAME} there; pass a LoRA run's output_dir or checkpoint-N.")
    checkpoint = (folder / "trainer_state.json").is_file()
    if checkpoint and use_ema and (folder / "ema" / WEIGHT_NAME).is_file():
        return folder / "ema", "lora_ema", folder.parent
    return folder, "lora", folder.parent if checkpoint else folder


def apply(unet: torch.nn.Module, folder: Path, scale: float = 1.0) -> None:
    """Sampling: load the LoRA file in folder into the UNet (any diffusers-format LoRA of a text-to-image UNet) at
    `scale`."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise UserError(f"--lora {folder}: LoRA applies to text-to-image UNets; this model is unconditional.")
    try:
        unet.load_lora_adapter(str(folder), prefix="unet", adapter_name="lora", weight_name=WEIGHT_NAME)
    except Exception as e:
        raise UserError(f"--lora {folder}: cannot load it into this UNet ({first_line(e)}); was it trained on "
                        "this base model?") from None
    unet.set_adapters(["lora"], weights=[scale])
