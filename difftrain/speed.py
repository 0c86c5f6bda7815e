"""The speed switches: --compile (through Accelerate's TorchDynamoPlugin), --channels_last, --allow_tf32,
--gradient_checkpointing and xformers attention. Attention is otherwise diffusers' default processor,
AttnProcessor2_0 (torch's scaled_dot_product_attention), which needs no switch; training on a CPU swaps it for
ShortSequenceAttnProcessor."""

from __future__ import annotations

import os

import torch
from accelerate.utils import DynamoBackend, TorchDynamoPlugin

from .errors import UserError
from .weights import parameters_sharded


SHORT_SEQUENCE = 256  # tokens (16×16): up to here diffusers' AttnProcessor trains faster than SDPA on a CPU


class ShortSequenceAttnProcessor:
    """Attention for training on a CPU: diffusers' AttnProcessor (baddbmm, softmax, bmm) up to SHORT_SEQUENCE query
    tokens, its default AttnProcessor2_0 (SDPA) above. The same attention either way; what differs is speed. On a CPU,
    SDPA runs a flash kernel whose backward is slow for short sequences: forward + backward of one attention layer in
    bf16, batch 32, 2 heads of 32, took 10.2 against 3.6 ms at 49 tokens (7×7, the default configs) and 29.2 against
    19.7 at 196, but 90.6 against 122.3 at 784 (batch 16), where SDPA wins and the classic one's N×N scores grow.
    Through the scripts: the text default 1.29-1.42x the images/s, the unconditional default within the machine's
    spread (README: Scale)."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.short, self.long = AttnProcessor(), AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):  # the signature of diffusers' processors: Attention passes on what it names
        # (batch, tokens, channels), or (batch, channels, h, w) for the attention of UNet2DModel's blocks
        tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        processor = self.short if tokens <= SHORT_SEQUENCE else self.long
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def use_short_sequence_attention(model) -> None:
    """Every attention of `model` still on diffusers' default processor gets ShortSequenceAttnProcessor (xformers' or an
    adapter's processor is kept). Nothing is saved of it: a saved model loads with the default again."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    for module in model.modules():
        if isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0:
            module.set_processor(ShortSequenceAttnProcessor())


def dynamo_plugin(cfg) -> TorchDynamoPlugin | None:
    """--compile as Accelerate's TorchDynamoPlugin: prepare() then compiles the model after wrapping it (DDP, FSDP2),
    as torch recommends, and unwrap_model takes the compiled module apart again. The backend is inductor unless
    `accelerate launch --dynamo_backend` chose one (ACCELERATE_DYNAMO_BACKEND: also how the tests pick a cheap one)."""
    if not cfg.compile:
        return None  # Accelerate's default: what `accelerate launch --dynamo_backend` set, else no compilation
    launched = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower() != "no"
    return TorchDynamoPlugin(backend=None if launched else "inductor", mode=cfg.compile_mode)


def compiles(accelerator) -> bool:
    """Whether prepare() compiles the model: --compile, or `accelerate launch --dynamo_backend` without it."""
    return accelerator.state.dynamo_plugin.backend != DynamoBackend.NO


def apply(cfg, model, accelerator) -> None:
    """The switches that act on the model before Accelerate prepares it, or say where they cannot."""
    if cfg.allow_tf32:
        if accelerator.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            accelerator.print(f"note: --allow_tf32 changes CUDA matmuls only; it has no effect on {accelerator.device.type}.")
    if compiles(accelerator) and accelerator.state.dynamo_plugin.mode == "reduce-overhead" and \
            accelerator.device.type != "cuda":
        accelerator.print(f"note: --compile_mode reduce-overhead adds CUDA graphs, which {accelerator.device.type} has "
                          "not; the model compiles as with default.")
    if cfg.channels_last:
        if parameters_sharded(accelerator):  # FSDP2 raises on a channels_last parameter; ZeRO-3 flattens them
            raise UserError("--channels_last with FSDP or ZeRO-3: sharding keeps each parameter as contiguous (NCHW) "
                            "pieces; drop --channels_last, or train with DDP or ZeRO-2.")
        # a convolution with channels_last weights computes and returns channels_last activations, so from the first
        # one on, every activation is channels_last (the batch is converted by that first convolution); the
        # parameters stay the same objects, so the optimizer and EMA made after follow
        model.to(memory_format=torch.channels_last)
    if cfg.offload_ema and accelerator.device.type == "cpu":
        accelerator.print("note: --offload_ema keeps the EMA in CPU memory, where this run's weights already are.")
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.enable_xformers_memory_efficient_attention:
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise UserError("--enable_xformers_memory_efficient_attention needs xformers: pip install xformers.") from None
        model.enable_xformers_memory_efficient_attention()
    if accelerator.device.type == "cpu":
        use_short_sequence_attention(model)


def before_prepare(model, accelerator) -> None:
    if compiles(accelerator) and hasattr(model, "to_json_string"):
        # diffusers' first save of a model (to_json_string) adds _class_name and _diffusers_version to its config in
        # place; the compiled forward reads the config, so that would recompile it after the first checkpoint: done now
        model.to_json_string()


def after_prepare(cfg, model, accelerator) -> None:
    if cfg.channels_last and not channels_last(model):  # e.g. DeepSpeed's flat parameter buffers
        accelerator.print(f"note: --channels_last: {accelerator.distributed_type.value} laid the parameters out again "
                          "(NCHW), so the convolutions run as without the flag.")


def channels_last(model) -> bool:
    """Whether every convolution kernel is in channels_last layout (one with a single input channel, or 1x1, is in
    both layouts at once)."""
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
