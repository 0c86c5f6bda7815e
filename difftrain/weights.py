"""The weights a run ships: an exponential moving average of the trained weights (diffusers' EMAModel) when EMA is
on, else the trained weights themselves. Grids, evaluations, saved pipelines and checkpoints all see them through
`whole`. Only what trains is averaged: every weight of a full fine-tune, the adapters of a LoRA run.

Sharded training (FSDP2, DeepSpeed ZeRO-3: each rank holds a piece of every parameter) goes through Accelerate only:
- the EMA is kept per rank, on that rank's pieces of the parameters Accelerate prepared (FSDP2): 1/N of the weights'
  memory on each of N ranks, and no communication per update (ZeRO-3's pieces hide behind placeholders: no EMA there);
- whole weights come from `accelerator.get_state_dict`, which every rank calls (it gathers the pieces) and which hands
  them to the main process; that process builds a full copy to sample or save with, held while the grid or save runs.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import DistributedType, is_compiled_module, parse_flag_from_env
from diffusers.training_utils import EMAModel

from .errors import UserError


def parameters_sharded(accelerator) -> bool:
    """FSDP and ZeRO-3 split every parameter across the ranks; DDP and ZeRO-1/2 keep a whole copy on each."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3
    return False


def check_sharding(accelerator, model: torch.nn.Module, *, use_ema: bool) -> None:
    """Before anything is written: what this run's Accelerate configuration asks for and what it got."""
    from . import lora

    asked = [name for name, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if parse_flag_from_env(flag)]
    if asked and accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # accelerate picks FSDP/DeepSpeed for GPUs (and XPU, NPU, ...) only, and says nothing on a CPU
        accelerator.print(f"note: accelerate does not run {asked[0]} on {accelerator.device.type}; this run is "
                          f"{accelerator.distributed_type.value} (every rank holds the whole model).")
    if not parameters_sharded(accelerator):
        return
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise UserError("FSDP version 1: difftrain shards with FSDP2; set fsdp_version: 2 in the accelerate config "
                        "(configs/accelerate/fsdp.yaml).")
    if lora.has_adapters(model):
        raise UserError("LoRA with FSDP or ZeRO-3: the adapters are small and the base is frozen, so there is nothing "
                        "to shard; launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml.")
    if use_ema and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise UserError("--use_ema with DeepSpeed ZeRO-3: its parameters are placeholders the EMA cannot follow; use "
                        "configs/accelerate/fsdp.yaml (EMA sharded with the weights), ZeRO-2, or --use_ema false.")


class ShippingWeights:
    def __init__(self, accelerator, model: torch.nn.Module, *, model_class: type, use_ema: bool, max_decay: float,
                 inv_gamma: float, power: float, offload: bool = False, foreach: bool = False,
                 start: torch.nn.Module | None = None):
        """model: as Accelerate prepared it; model_class: its class before (FSDP2 gives the module it shards a class
        of its own); offload: the EMA lives in CPU memory and visits the device for each update (diffusers'
        --offload_ema); start: the network the average starts from (default: `model`; diffusers' --non_ema_revision)."""
        # get_state_dict gathers from the sharded module itself, not from torch.compile's wrapper of it (--compile)
        self.prepared = model._orig_mod if is_compiled_module(model) else model
        self.accelerator, self.model_class = accelerator, model_class
        # the network being trained (its pieces, when sharded), uncompiled: grids, evaluations and saves run it as it
        # is, and its state_dict has diffusers' keys (a compiled module's are prefixed _orig_mod.)
        self.model = accelerator.unwrap_model(model, keep_torch_compile=False)
        self.sharded = parameters_sharded(accelerator)
        self.device, self.offload = torch.device(accelerator.device), offload
        self.ema = None
        self._trained = [p for p in self.model.parameters() if p.requires_grad]  # fixed for the run: listed once
        self.whole_model = len(self._trained) == len(list(self.model.parameters()))  # else adapters (LoRA)
        if use_ema:
            # warm-up (decay 1 - (1 + step / inv_gamma) ** -power, capped at max_decay) so a short run's average is
            # not dominated by its random start. The whole model's EMA saves as a UNet (save_pretrained); adapters'
            # EMA is a list of tensors, checkpointed as accelerate state
            saveable = dict(model_cls=model_class, model_config=self.model.config) if self.whole_model else {}
            first = [p for p in start.parameters() if p.requires_grad] if start is not None and not self.sharded \
                else self.trained()
            self.ema = EMAModel(first, decay=max_decay, use_ema_warmup=True, inv_gamma=inv_gamma, power=power,
                                foreach=foreach, **saveable)
            if start is not None and self.sharded:
                self._set_average([p for p in start.parameters() if p.requires_grad])
            self.place()

    def place(self) -> None:
        """The EMA where it lives between updates: the device, or (offloaded) CPU memory, pinned for fast copies.
        Always fp32: DeepSpeed casts the module itself to bf16/fp16, and an average in that precision would round
        every small update away."""
        if self.ema is None:
            return
        self.ema.to("cpu" if self.offload else self.device, dtype=torch.float32)
        if self.offload and self.device.type == "cuda":
            self.ema.pin_memory()

    def trained(self) -> list[torch.nn.Parameter]:
        return self._trained

    def update(self) -> None:
        """After each optimizer update (on every rank: each averages its own pieces when sharded)."""
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
        """The model in eval mode with the shipping weights in place; the trained weights are back afterwards.
        Sharded, this rank's pieces only: `whole` is what grids and saves use."""
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

    @contextmanager
    def whole(self, average: bool = True):
        """EVERY rank enters. The main process gets the shipping weights (average=False: the trained ones) as one
        whole model; the other ranks get None. Unsharded that is the live model (in eval mode when averaged); sharded,
        a full copy built from accelerate's get_state_dict, in eval mode on the device."""
        main = self.accelerator.is_main_process
        if not self.sharded:
            with (self.swapped_in() if average else nullcontext(self.model)) if main else nullcontext() as model:
                yield model
            return
        with self.swapped_in() if average else nullcontext():
            state = self.accelerator.get_state_dict(self.prepared)  # collective: the pieces meet on the main process
        if not main:
            yield None
            return
        with init_empty_weights():  # no random initialisation: every weight is assigned from `state` below
            copy = self.model_class.from_config(self.model.config)
        copy.load_state_dict(state, assign=True)
        yield copy.to(self.device).eval()

    def save_average(self, folder: Path) -> None:
        """Every rank calls this: unet_ema/ as diffusers' EMAModel.save_pretrained writes it (the weights, and its
        step counters in config.json), so EMAModel.from_pretrained resumes it."""
        if not self.sharded:
            if self.accelerator.is_main_process:
                self.ema.save_pretrained(str(folder))
            return
        with self.whole() as copy:
            if copy is not None:
                copy.register_to_config(**{k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"})
                copy.save_pretrained(str(folder))

    def load_average(self, folder: Path) -> None:
        """The average from a checkpoint's unet_ema/; every rank reads it, and keeps its own pieces when sharded."""
        loaded = EMAModel.from_pretrained(str(folder), self.model_class)
        if not self.sharded:
            self.ema.load_state_dict(loaded.state_dict())
            self.place()
            return
        counters = loaded.state_dict()
        full = counters.pop("shadow_params")
        self.ema.load_state_dict(counters)
        self._set_average(full)

    def _set_average(self, full: list[torch.Tensor]) -> None:
        """Sharded: the average's values from whole tensors, each rank keeping the piece torch's layout gives it."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        for shadow, tensor in zip(self.ema.shadow_params, full, strict=True):
            tensor = tensor.detach().to(shadow.device, shadow.dtype)
            if isinstance(shadow, DTensor):  # FSDP2's pieces
                tensor = distribute_tensor(tensor, shadow.device_mesh, shadow.placements)
            shadow.copy_(tensor)
