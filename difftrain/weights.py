"""The weights a run ships: an exponential moving average of the trained weights (diffusers' EMAModel) when EMA is
on, else the trained weights themselves. Grids, evaluations and saved pipelines all see them through `swapped_in`.
Only what trains is averaged: every weight of a full fine-tune, the adapters of a LoRA run."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel


class ShippingWeights:
    def __init__(self, model: torch.nn.Module, *, use_ema: bool, max_decay: float, inv_gamma: float, power: float,
                 device):
        self.model = model  # the unwrapped network being trained
        self.ema = None
        self.whole_model = all(p.requires_grad for p in model.parameters())  # else adapters (LoRA) on a frozen base
        if use_ema:
            # warm-up (decay 1 - (1 + step / inv_gamma) ** -power, capped at max_decay) so a short run's average is
            # not dominated by its random start. The whole model's EMA saves as a UNet (save_pretrained); adapters'
            # EMA is a list of tensors, checkpointed as accelerate state
            saveable = dict(model_cls=type(model), model_config=model.config) if self.whole_model else {}
            self.ema = EMAModel(self.trained(), decay=max_decay, use_ema_warmup=True, inv_gamma=inv_gamma,
                                power=power, **saveable)
            self.ema.to(device)

    def trained(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def update(self) -> None:
        """After each optimizer update."""
        if self.ema is not None:
            self.ema.step(self.trained())

    @property
    def decay(self) -> float | None:
        return self.ema.cur_decay_value if self.ema is not None else None

    @contextmanager
    def swapped_in(self):
        """The model in eval mode with the shipping weights in place; the trained weights are back afterwards."""
        if self.ema is not None:
            self.ema.store(self.trained())
            self.ema.copy_to(self.trained())
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train()
            if self.ema is not None:
                self.ema.restore(self.trained())
