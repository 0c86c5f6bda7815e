"""The weights a run ships: an exponential moving average of the trained weights (diffusers' EMAModel) when EMA is
on, else the trained weights themselves. Grids, evaluations and saved pipelines all see them through `swapped_in`."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel


class ShippingWeights:
    def __init__(self, model: torch.nn.Module, *, use_ema: bool, max_decay: float, inv_gamma: float, power: float,
                 device):
        self.model = model  # the unwrapped network being trained
        self.ema = None
        if use_ema:
            # warm-up (decay 1 - (1 + step / inv_gamma) ** -power, capped at max_decay) so a short run's average is
            # not dominated by its random start
            self.ema = EMAModel(model.parameters(), decay=max_decay, use_ema_warmup=True, inv_gamma=inv_gamma,
                                power=power, model_cls=type(model), model_config=model.config)
            self.ema.to(device)

    def update(self) -> None:
        """After each optimizer update."""
        if self.ema is not None:
            self.ema.step(self.model.parameters())

    @property
    def decay(self) -> float | None:
        return self.ema.cur_decay_value if self.ema is not None else None

    @contextmanager
    def swapped_in(self):
        """The model in eval mode with the shipping weights in place; the trained weights are back afterwards."""
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train()
            if self.ema is not None:
                self.ema.restore(self.model.parameters())
