"""Build or load the UNets and the training noise scheduler (text encoders: text.py; VAEs: latents.py)."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel

from .errors import UserError
from .utils import first_line


def downsampling_factor(unet_config, model_cls=UNet2DModel) -> int:
    default = inspect.signature(model_cls.__init__).parameters["block_out_channels"].default
    return 2 ** (len(unet_config.get("block_out_channels", default)) - 1)  # every block but the last halves the size


def check_resolution(resolution: int, unet_config, model_cls=UNet2DModel) -> None:
    factor = downsampling_factor(unet_config, model_cls)
    blocks = factor.bit_length()
    if resolution % factor:
        fixed = max(factor, round(resolution / factor) * factor)
        raise UserError(
            f"--resolution {resolution} is not divisible by {factor}, the UNet's downsampling factor "
            f"({blocks} blocks); use --resolution {fixed} or fewer blocks."
        )


def _check_keys(model_cls, kwargs: dict, where: str) -> None:
    valid = set(inspect.signature(model_cls.__init__).parameters) - {"self"}
    for key in kwargs:
        if key not in valid and not key.startswith("_"):
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"{where}: '{key}' is not a {model_cls.__name__} argument.{hint}")


def load_unet_config(path: str, flag: str, model_cls=UNet2DModel) -> dict:
    """A UNet config from a config.json, a UNet folder, or a pipeline folder (its unet/)."""
    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        p = p / "unet"
    try:
        return dict(model_cls.load_config(str(p)))
    except Exception as e:
        raise UserError(f"{flag} {path}: no UNet config there ({first_line(e)}).") from None


def build_unet(unet_args: dict, *, resolution: int, channels: int, model_cls=UNet2DModel, **extra):
    """A fresh UNet from config arguments; size and channels come from the data."""
    config = {k: v for k, v in unet_args.items() if not k.startswith("_")}
    _check_keys(model_cls, config, "unet")
    check_resolution(resolution, config, model_cls)
    for key, value in (("sample_size", resolution), ("in_channels", channels), ("out_channels", channels)):
        if config.get(key, value) != value:
            raise UserError(f"unet.{key} is {config[key]} but the data gives {value}; drop it from the config.")
        config[key] = value
    for key, value in extra.items():  # e.g. cross_attention_dim, set by the text encoder's width
        if config.get(key, value) != value:
            raise UserError(f"unet.{key} is {config[key]} but must be {value} here; drop it from the config.")
        config[key] = value
    try:
        unet = model_cls(**config)
    except Exception as e:  # unknown block type, lists of different lengths, groups that do not divide ...
        raise UserError(f"--unet: diffusers cannot build this {model_cls.__name__} ({first_line(e)}); fix --unet "
                        "(configs/mnist.yaml shows a working one).") from None
    _check_forward(unet, channels, resolution, extra.get("cross_attention_dim"))
    return unet


def _check_forward(unet, channels: int, resolution: int, context_width: int | None) -> None:
    """One tiny forward pass: a UNet whose blocks do not fit together (channel counts, group norms) fails here, in
    one line, instead of at the first training step."""
    x = torch.zeros(1, channels, resolution, resolution)
    kwargs = {"encoder_hidden_states": torch.zeros(1, 1, context_width)} if context_width else {}
    if unet.config.get("num_class_embeds"):  # a class-conditional UNet2DModel needs its labels
        kwargs["class_labels"] = torch.tensor([0])
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            unet(x, torch.tensor([0]), **kwargs)
    except Exception as e:
        raise UserError(f"--unet: the UNet does not run on {channels}x{resolution}x{resolution} inputs "
                        f"({first_line(e)}); check its block_out_channels, norm_num_groups and block types.") from None


def load_pretrained_unet(path: str, model_cls=UNet2DModel, revision: str | None = None, variant: str | None = None):
    try:  # float32 whatever the saved dtype: these are the weights being trained
        return model_cls.from_pretrained(path, subfolder="unet", revision=revision, variant=variant,
                                         torch_dtype=torch.float32)
    except Exception as e:
        raise UserError(
            f"--pretrained_model_name_or_path {path}: cannot load unet/ ({first_line(e)})."
        ) from None


def noise_scheduler_for(cfg):
    """The training scheduler: the pretrained one when continuing (its betas), else built from the flags.
    An explicit --prediction_type always wins; it is written into the saved scheduler config."""
    if cfg.objective == "edm":
        return EDMEulerScheduler(sigma_data=cfg.sigma_data, prediction_type="epsilon")
    if cfg.pretrained_model_name_or_path:
        try:
            scheduler = DDPMScheduler.from_pretrained(cfg.pretrained_model_name_or_path, subfolder="scheduler")
        except Exception as e:
            raise UserError(
                f"--pretrained_model_name_or_path {cfg.pretrained_model_name_or_path}: cannot load scheduler/ "
                f"({first_line(e)})."
            ) from None
        overrides = {"prediction_type": cfg.prediction_type} if cfg.prediction_type is not None else {}
        if cfg.rescale_betas_zero_snr:
            overrides["rescale_betas_zero_snr"] = True
        return DDPMScheduler.from_config(scheduler.config, **overrides) if overrides else scheduler
    return DDPMScheduler(
        num_train_timesteps=cfg.ddpm_num_steps,
        beta_schedule=cfg.ddpm_beta_schedule,
        prediction_type=cfg.prediction_type or "v_prediction",  # x0 stays accurate at high noise, unlike epsilon
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr,
    )


def module_fingerprint(module, *extra: str) -> str:
    """A content hash of a frozen network (class, config, a checksum of every weight): the key of caches
    computed with it, so changed weights in the same folder never reuse stale embeddings or latents."""
    import hashlib

    h = hashlib.sha256(type(module).__name__.encode())
    config = module.config
    h.update((config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else str(dict(config))).encode())
    for item in extra:
        h.update(item.encode())
    with torch.no_grad():
        for name, p in module.state_dict().items():
            p = p.double()
            h.update(f"{name} {p.sum().item():.10e} {p.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:20]
