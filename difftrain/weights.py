"""The weights a run ships: an exponential moving average of the trained weights (diffusers' EMAModel) when EMA is
on, else the trained weights themselves. Grids, evaluations and saved pipelines all see them through `swapped_in`.
Only what trains is averaged: every weight of a full fine-tune, the adapters of a LoRA run."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel


class ShippingWeights:
    def __init__(self, model: torch.nn.Module, *, use_ema: bool, max_decay: float, inv_gamma: float, power: float,
                 device, offload: bool = False, foreach: bool = False, start: torch.nn.Module | None = None):
        """offload: the EMA lives in CPU memory and visits the device for each update (diffusers' --offload_ema);
        start: the network the average starts from (default: `model`; diffusers' --non_ema_revision)."""
        self.model = model  # the unwrapped network being trained
        self.device, self.offload = torch.device(device), offload
        self.ema = None
        self._trained = [p for p in model.parameters() if p.requires_grad]  # fixed for the run: listed once
        self.whole_model = len(self._trained) == len(list(model.parameters()))  # else adapters (LoRA) on a frozen base
        if use_ema:
            # warm-up (decay 1 - (1 + step / inv_gamma) ** -power, capped at max_decay) so a short run's average is
            # not dominated by its random start. The whole model's EMA saves as a UNet (save_pretrained); adapters'
            # EMA is a list of tensors, checkpointed as accelerate state
            saveable = dict(model_cls=type(model), model_config=model.config) if self.whole_model else {}
            first = [p for p in start.parameters() if p.requires_grad] if start is not None else self.trained()
            self.ema = EMAModel(first, decay=max_decay, use_ema_warmup=True, inv_gamma=inv_gamma, power=power,
                                foreach=foreach, **saveable)
            self.place()

    def place(self) -> None:
        """The EMA where it lives between updates: the device, or (offloaded) CPU memory, pinned for fast copies."""
        if self.ema is None:
            return
        self.ema.to("cpu" if self.offload else self.device)
        if self.offload and self.device.type == "cuda":
            self.ema.pin_memory()

    def trained(self) -> list[torch.nn.Parameter]:
        return self._trained

    def update(self) -> None:
        """After each optimizer update."""
        if self.ema is not None:
            if self.offload:
                self.ema.to(self.device, non_blocking=True)
            self.ema.step(self.trained())
            if self.offload:
                self.ema.to("cpu", non_blocking=True)

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
