"""speed.py, checked on CPU: --compile (through Accelerate, compiled once, saves and resume as without it),
--channels_last (the same training up to rounding), SDPA attention in every UNet we build (the classic processor for
short sequences when training on a CPU), and what the switches refuse or say."""

import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, SHORT, TINY
from difftrain import config, trainer


def weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


@pytest.fixture
def cheap_compile(monkeypatch):
    """--compile with the backend `accelerate launch --dynamo_backend aot_eager` sets: torch.compile's graph capture
    and forward/backward split (what inductor compiles), run by eager kernels instead of inductor's generated C++
    (about 2 minutes cold for the tiny UNet on a CPU). Any recompilation is an error: the run must compile once."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "aot_eager")
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()  # each run compiled a module of its own: nothing of theirs stays for later tests


def test_compile_trains_ships_the_uncompiled_weights_and_resumes_exactly(tmp_path, train_unconditional, cheap_compile,
                                                                        monkeypatch):
    """--compile: the model that trains is the compiled one; checkpoints and the pipeline hold diffusers' keys (not
    the compiled wrapper's _orig_mod.*), the pipeline ships the EMA, and a resumed run (compiling again) ends bit for
    bit where the uninterrupted one does. The first update of each process, the compiling one, is logged as
    compile_seconds and left out of images/s: a clock that jumps 1000 s during it shows that."""
    import time
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.utils import is_compiled_module
    from diffusers import DDPMPipeline

    from difftrain import maintenance

    shift, trained_models, logged = [0.0], [], []
    real_update = trainer.update

    def update_compiling_slowly(run, batch):
        if not trained_models or trained_models[-1] is not run.model:  # a run's first update compiles
            trained_models.append(run.model)
            shift[0] += 1000.0
        return real_update(run, batch)

    monkeypatch.setattr(trainer, "update", update_compiling_slowly)
    monkeypatch.setattr(maintenance, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + shift[0]))
    monkeypatch.setattr(Accelerator, "log", lambda accelerator, values, step=None, **kwargs: logged.append((step, values)))
    flags = [*TINY, "--compile", "--max_train_steps", 4, "--checkpointing_steps", 2, "--validation_steps", 4,
             "--logging_steps", 2]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_unconditional(*flags, "--output_dir", whole) == 0
    assert is_compiled_module(trained_models[0])
    assert yaml.safe_load((whole / "training_config.yaml").read_text())["compile"] is True
    compile_logs = [(step, values["compile_seconds"]) for step, values in logged if "compile_seconds" in values]
    assert len(compile_logs) == 1 and compile_logs[0][0] == 1 and compile_logs[0][1] >= 1000
    rates = {step: values["images_per_s"] for step, values in logged if "images_per_s" in values}
    assert sorted(rates) == [2, 4] and rates[2] > 16 / 1000 * 10  # updates 1-2 with the 1000 s would give 0.016

    final = whole / "checkpoint-4"
    trained = weights(final / "unet")
    assert trained.keys() == trainer_state(trained_models[0]).keys()  # diffusers' keys, no _orig_mod. prefix
    assert all(torch.equal(v, trainer_state(trained_models[0])[k]) for k, v in trained.items())
    shipped, ema = DDPMPipeline.from_pretrained(whole).unet.state_dict(), weights(final / "unet_ema")
    assert all(torch.equal(shipped[k], ema[k]) for k in ema) and any(not torch.equal(ema[k], trained[k]) for k in ema)

    resumed.mkdir()
    os.system(f"cp -r {whole / 'checkpoint-2'} {resumed}/")
    logged.clear()
    torch._dynamo.reset()  # as a new process: the resumed run's model is another module
    assert train_unconditional(*flags, "--output_dir", resumed, "--resume_from_checkpoint", "latest") == 0
    assert is_compiled_module(trained_models[1]) and [step for step, v in logged if "compile_seconds" in v] == [3]
    for sub in ("unet", "unet_ema"):
        a, b = weights(final / sub), weights(resumed / "checkpoint-4" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def trainer_state(compiled_model):
    return compiled_model._orig_mod.state_dict()


def test_channels_last_gives_the_same_losses_and_weights_up_to_float_rounding(tmp_path, train_unconditional,
                                                                              monkeypatch):
    from accelerate import Accelerator

    losses, formats = {}, {}
    real_update = trainer.update

    def recorded_update(run, batch):  # the layout of each 4-D weight: one of a 1-channel or 1x1 kernel is both
        formats[list(losses)[-1]] = {"nchw" if p.is_contiguous() else "channels_last"
                                     for p in run.model.parameters() if p.dim() == 4 and
                                     p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last)}
        return real_update(run, batch)

    monkeypatch.setattr(trainer, "update", recorded_update)
    monkeypatch.setattr(Accelerator, "log", lambda accelerator, values, step=None, **kwargs:
                        losses[list(losses)[-1]].append(values["loss"]))  # every update (--logging_steps 1 on CPU)
    for name, extra in (("plain", []), ("channels_last", ["--channels_last"])):
        losses[name] = []
        assert train_unconditional(*SHORT, "--output_dir", tmp_path / name, *extra) == 0
    assert len(losses["plain"]) == 3 and losses["channels_last"] == pytest.approx(losses["plain"], rel=1e-5)
    assert formats == {"plain": {"nchw"}, "channels_last": {"channels_last"}}
    a, b = weights(tmp_path / "plain" / "unet"), weights(tmp_path / "channels_last" / "unet")
    # Adam divides each step by the gradient's size, so rounding that flips a near-zero gradient's sign moves that
    # weight by up to 2 x lr (1e-3) per update: a few weights differ by more than rounding, within that bound
    far = sum((~torch.isclose(a[k], b[k], rtol=1e-4, atol=1e-6)).sum().item() for k in a)
    assert far < 1e-3 * sum(v.numel() for v in a.values()) and all(torch.allclose(a[k], b[k], atol=6e-3) for k in a)


def test_every_attention_of_our_unets_is_torchs_scaled_dot_product_attention():
    """diffusers' default processor, AttnProcessor2_0 (F.scaled_dot_product_attention: flash / memory-efficient
    kernels on GPUs), in the unconditional and text UNets as the default configs and the tiny one build them."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from difftrain import text_config
    from difftrain.models import build_unet

    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["unet"]
    unconditional = [build_unet(args, resolution=size, channels=1) for args, size in
                     ((config.TrainConfig().unet, 28), (tiny, 16))]
    text = build_unet(text_config.TextToImageConfig().unet, resolution=28, channels=1, model_cls=UNet2DConditionModel,
                      cross_attention_dim=384)
    for unet in unconditional:  # UNet2DModel has no attn_processors property: its Attention modules
        processors = [m.processor for m in unet.modules() if isinstance(m, Attention)]
        assert processors and all(type(p) is AttnProcessor2_0 for p in processors)
    assert text.attn_processors and all(type(p) is AttnProcessor2_0 for p in text.attn_processors.values())


@pytest.mark.parametrize("side", [7, 17])  # 49 tokens (the default configs' 7×7) and 289 (> SHORT_SEQUENCE)
def test_short_sequence_attention_is_the_same_attention_by_the_faster_kernel(side):
    """ShortSequenceAttnProcessor gives SDPA's outputs and gradients (up to float rounding) for self- and
    cross-attention, computing them with the classic processor up to SHORT_SEQUENCE tokens and SDPA above."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from difftrain.speed import SHORT_SEQUENCE, ShortSequenceAttnProcessor

    torch.manual_seed(0)
    spatial = Attention(32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True,
                        rescale_output_factor=1.0, _from_deprecated_attn_block=True)  # UNet2DModel's: (b, c, h, w)
    cross = Attention(32, cross_attention_dim=24, heads=2, dim_head=16)  # UNet2DConditionModel's: (b, tokens, c)
    cases = [(spatial, (torch.randn(3, 32, side, side),)),
             (cross, (torch.randn(3, side * side, 32), torch.randn(3, 5, 24)))]
    for module, inputs in cases:
        results = []
        for processor in (AttnProcessor2_0(), ShortSequenceAttnProcessor()):
            module.set_processor(processor)
            leaves = [x.clone().requires_grad_() for x in inputs]
            out = module(*leaves)
            out.square().sum().backward()
            results.append([out, *[x.grad for x in leaves], *[p.grad.clone() for p in module.parameters()]])
            module.zero_grad()
        assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(*results))
    chosen = []
    for name in ("short", "long"):  # which kernel a call took
        inner = getattr(processor, name)
        setattr(processor, name, lambda *a, _inner=inner, _name=name, **k: chosen.append(_name) or _inner(*a, **k))
    cross(*cases[1][1])
    assert chosen == ["short" if side * side <= SHORT_SEQUENCE else "long"]


def test_training_on_a_cpu_swaps_the_default_attention_only(tmp_path):
    """speed.apply on a CPU gives every default (SDPA) attention of the model ShortSequenceAttnProcessor and leaves
    another processor alone; the weights are untouched, and a saved model loads with diffusers' default again."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, DynamoBackend
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    from difftrain import speed
    from difftrain.models import build_unet

    unet = build_unet(config.TrainConfig().unet, resolution=28, channels=1)
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    kept = AttnProcessor()  # as if the user's code had chosen it
    attentions[0].set_processor(kept)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    accelerator = SimpleNamespace(device=torch.device("cpu"), print=print, distributed_type=DistributedType.NO,
                                  state=SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend.NO)))
    speed.apply(config.TrainConfig(), unet, accelerator)
    assert attentions[0].processor is kept
    assert all(type(m.processor) is speed.ShortSequenceAttnProcessor for m in attentions[1:]) and len(attentions) > 1
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    unet.save_pretrained(str(tmp_path))
    loaded = UNet2DModel.from_pretrained(str(tmp_path))
    assert all(type(m.processor) is AttnProcessor2_0 for m in loaded.modules() if isinstance(m, Attention))


def test_what_the_speed_switches_refuse_or_say():
    """--compile_mode without --compile, and --channels_last under FSDP (whose fully_shard raises on a channels_last
    parameter, tried on CPU), are one-line errors; reduce-overhead's CUDA graphs off CUDA are a note."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, DynamoBackend

    from difftrain import speed
    from difftrain.errors import UserError

    with pytest.raises(UserError, match="pass --compile or drop --compile_mode"):
        config.parse(config.TrainConfig, ["--compile_mode", "max-autotune"])
    cfg = config.parse(config.TrainConfig, ["--compile", "--compile_mode", "reduce-overhead", "--channels_last"])
    printed = []
    accelerator = SimpleNamespace(device=torch.device("cpu"), print=printed.append, distributed_type=DistributedType.NO,
                                  state=SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend.INDUCTOR,
                                                                                      mode=cfg.compile_mode)))
    speed.apply(cfg, torch.nn.Conv2d(2, 2, 3), accelerator)
    assert len(printed) == 1 and "reduce-overhead adds CUDA graphs, which cpu has not" in printed[0]
    accelerator.distributed_type = DistributedType.FSDP
    with pytest.raises(UserError, match="--channels_last with FSDP or ZeRO-3"):
        speed.apply(cfg, torch.nn.Conv2d(2, 2, 3), accelerator)
