"""The optimizer of a run: torch's fused AdamW (or bitsandbytes' 8-bit AdamW), its learning rate, and whether it can
skip a bad update on the device."""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType

from .errors import UserError


def learning_rate(cfg, num_processes: int) -> float:
    """--learning_rate, times the images per update with --scale_lr (diffusers' rule)."""
    if cfg.scale_lr:
        return cfg.learning_rate * cfg.train_batch_size * cfg.gradient_accumulation_steps * num_processes
    return cfg.learning_rate


def make_optimizer(cfg, params, lr: float, device_type: str):
    kwargs = dict(lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (CUDA only).") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    # fused: one kernel per step (the fastest AdamW on CUDA and on CPU), and the one that can skip an update on
    # device (skips_on_device)
    return torch.optim.AdamW(params, fused=device_type in ("cuda", "cpu"), **kwargs)


def skips_on_device(accelerator, optimizer) -> bool:
    """Whether the optimizer can skip an update without a host sync: torch's fused AdamW leaves the weights, its
    moments and its step count untouched when its `found_inf` is 1 (the protocol GradScaler drives). Not under fp16,
    whose GradScaler sets found_inf itself, nor DeepSpeed, which steps its own optimizer; a checkpoint written by a
    non-fused AdamW (an older run) restores fused=False."""
    inner = optimizer.optimizer
    return (accelerator.scaler is None and accelerator.distributed_type != DistributedType.DEEPSPEED
            and isinstance(inner, torch.optim.AdamW) and all(group["fused"] for group in inner.param_groups))
