"""Sharded training through Accelerate (FSDP2, DeepSpeed ZeRO-3) and the configs/accelerate/ files, on CPU.

accelerate never picks FSDP on a CPU (it trains DDP instead), so the FSDP run goes through tests/fsdp_on_cpu.py, which
switches Accelerate's distributed type to FSDP after its set-up; the rest is Accelerate's and torch's own FSDP2 code,
on gloo. DeepSpeed runs (one rank: accelerate gives every CPU rank process index 0) only where it is installed."""

import os
import subprocess
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from conftest import ROOT, TINY, tiny_2d_unet
from difftrain import latents, text_to_image
from difftrain.errors import UserError
from difftrain.weights import check_sharding

CONFIGS = ROOT / "configs" / "accelerate"


def weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def launch_env(config_file):
    """(launch arguments, environment) that `accelerate launch --config_file F` gives the processes it starts,
    from accelerate's own launch code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train_unconditional.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name,expected", [
    ("ddp", {"ACCELERATE_USE_FSDP": None, "ACCELERATE_USE_DEEPSPEED": None}),
    ("fsdp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
              "FSDP_TRANSFORMER_CLS_TO_WRAP": "ResnetBlock2D", "FSDP_RESHARD_AFTER_FORWARD": "true"}),
    ("deepspeed_zero2", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
    ("deepspeed_zero3", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                         "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
                         "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}),
])
def test_accelerate_configs_launch_what_they_say(name, expected, monkeypatch):
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    args, env = launch_env(CONFIGS / f"{name}.yaml")
    assert {k: env.get(k) for k in expected} == expected
    assert args.multi_gpu == (name == "ddp") and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # DeepSpeed takes --gradient_accumulation_steps


def test_fsdp2_ships_whole_weights_keeps_the_ema_per_shard_and_resumes_exactly(tmp_path):
    """Two gloo ranks under FSDP2 (configs/accelerate/fsdp.yaml): 4 updates, then the same run resumed from its
    checkpoint-2, in one launch."""
    from accelerate.utils import merge_fsdp_weights

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    flags = [*map(str, TINY), "--max_train_steps", "4", "--checkpointing_steps", "1", "--validation_steps", "4",
             "--use_ema"]
    env = {**launch_env(CONFIGS / "fsdp.yaml")[1], "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           str(ROOT / "tests" / "fsdp_on_cpu.py"), str(ROOT / "train_unconditional.py"),
           *flags, "--output_dir", str(whole), "::",
           *flags, "--output_dir", str(resumed), "--resume_from_checkpoint", str(whole / "checkpoint-2")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = whole / "checkpoint-4"
    # sharded for real: each rank wrote its own piece of the weights to Accelerate's checkpoint
    assert sorted(p.name for p in (final / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # unet/ is exactly those pieces put together
    merge_fsdp_weights(str(final / "pytorch_model_fsdp_0"), str(tmp_path / "merged"))
    merged, trained = load_file(tmp_path / "merged" / "model.safetensors"), weights(final / "unet")
    assert merged.keys() == trained.keys() and all(torch.equal(merged[k], trained[k]) for k in trained)
    # every element of every rank's piece of the EMA took update 4 (diffusers' warm-up decay at step 4, inv_gamma 1,
    # power 0.75): ema4 = d·ema3 + (1 - d)·w4
    ema3, ema4 = weights(whole / "checkpoint-3" / "unet_ema"), weights(final / "unet_ema")
    d = 1 - (1 + 3) ** -0.75
    assert all(torch.allclose(ema4[k], d * ema3[k] + (1 - d) * trained[k], rtol=0, atol=1e-6) for k in trained)
    assert any(not torch.equal(ema4[k], trained[k]) for k in trained)
    # the pipeline ships the EMA, whole; the grid was drawn
    shipped = weights(whole / "unet")
    assert shipped.keys() == ema4.keys() and all(torch.equal(shipped[k], ema4[k]) for k in ema4)
    assert (whole / "samples" / "step-4.png").is_file()
    # exact resume: weights and EMA (its step counter too, which sets the decay)
    for sub in ("unet", "unet_ema"):
        a, b = weights(final / sub), weights(resumed / "checkpoint-4" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    assert '"optimization_step": 4' in (resumed / "checkpoint-4" / "unet_ema" / "config.json").read_text()


def accelerator(distributed_type, *, fsdp2=True, zero_stage=None):
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": zero_stage}}) if zero_stage else None
    printed = []
    return SimpleNamespace(distributed_type=distributed_type, is_fsdp2=fsdp2, device=torch.device("cpu"),
                           state=SimpleNamespace(deepspeed_plugin=plugin), print=printed.append, printed=printed)


@pytest.mark.parametrize("setup,use_ema,message", [
    (dict(distributed_type=DistributedType.FSDP, fsdp2=False), False, "fsdp_version: 2"),
    (dict(distributed_type=DistributedType.DEEPSPEED, zero_stage=3), True, "--use_ema with DeepSpeed ZeRO-3"),
    (dict(distributed_type=DistributedType.DEEPSPEED, zero_stage=3), False, None),
    (dict(distributed_type=DistributedType.DEEPSPEED, zero_stage=2), True, None),
    (dict(distributed_type=DistributedType.FSDP), True, None),
])
def test_what_sharded_training_refuses(setup, use_ema, message):
    check = lambda: check_sharding(accelerator(**setup), tiny_2d_unet(), use_ema=use_ema)  # noqa: E731
    if message is None:
        check()
    else:
        with pytest.raises(UserError, match=message):
            check()


def test_lora_is_refused_under_sharding_and_an_fsdp_config_on_cpu_is_named(monkeypatch):
    from difftrain import lora

    model = tiny_2d_unet()
    monkeypatch.setattr(lora, "has_adapters", lambda m: m is model)
    with pytest.raises(UserError, match="LoRA with FSDP or ZeRO-3"):
        check_sharding(accelerator(DistributedType.FSDP), model, use_ema=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cpu = accelerator(DistributedType.MULTI_CPU)
    check_sharding(cpu, model, use_ema=False)  # not sharded: LoRA is fine
    assert cpu.printed == ["note: accelerate does not run FSDP on cpu; this run is MULTI_CPU (every rank holds the "
                           "whole model)."]


def test_frozen_models_load_outside_zero_init(monkeypatch, tmp_path):
    """transformers partitions a model it creates whenever its global DeepSpeed config says ZeRO-3: the text encoder
    and the VAE load with it cleared, and it is back afterwards."""
    import accelerate.state
    from transformers.integrations import deepspeed as hf_deepspeed

    class Zero3Config:  # what transformers asks of an HfDeepSpeedConfig
        config = {}

        def is_zero3(self):
            return True

    zero3 = Zero3Config()

    class Plugin:  # accelerate's DeepSpeedPlugin, as far as loading frozen models uses it
        @contextmanager
        def zero3_init_context_manager(self, enable=False):
            yield

        def set_deepspeed_weakref(self):
            hf_deepspeed.set_hf_deepspeed_config(zero3)

    seen = []
    monkeypatch.setattr(accelerate.state, "is_initialized", lambda: True)
    monkeypatch.setattr(accelerate.state, "AcceleratorState", lambda: SimpleNamespace(deepspeed_plugin=Plugin()))
    monkeypatch.setattr(text_to_image.TextEncoder, "load",
                        lambda *a, **k: seen.append(("text encoder", hf_deepspeed.is_deepspeed_zero3_enabled())))
    original = latents.MockAutoencoder.from_pretrained.__func__

    def load_vae(cls, *args, **kwargs):
        seen.append(("vae", hf_deepspeed.is_deepspeed_zero3_enabled()))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(latents.MockAutoencoder, "from_pretrained", classmethod(load_vae))
    latents.MockAutoencoder(factor=2, in_channels=1).save_pretrained(tmp_path / "vae")
    Plugin().set_deepspeed_weakref()  # as accelerate sets it up for ZeRO-3
    try:
        cfg = SimpleNamespace(text_encoder_name_or_path="encoder", revision=None)
        sources = text_to_image.Sources(("encoder", None, None), None, "TextToImagePipeline")
        text_to_image.load_text_encoder(cfg, sources)
        latents.load_vae(str(tmp_path / "vae"))
        assert seen == [("text encoder", False), ("vae", False)]
        assert hf_deepspeed.is_deepspeed_zero3_enabled()  # the trained UNet's own set-up still sees ZeRO-3
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


def deepspeed_run(config, script, flags):
    """One rank: accelerate gives every rank of a CPU-only DeepSpeed run process index 0."""
    env = launch_env(CONFIGS / config)[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29543",
           str(ROOT / script), *map(str, flags)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_deepspeed_zero2_resumes_exactly_with_ema_and_zero3_trains_text_with_a_frozen_encoder(tmp_path):
    pytest.importorskip("deepspeed")
    from test_train_text_to_image import TINY_TEXT_UNET

    flags = [*TINY, "--max_train_steps", 4, "--checkpointing_steps", 2, "--validation_steps", 4, "--use_ema"]
    deepspeed_run("deepspeed_zero2.yaml", "train_unconditional.py", [*flags, "--output_dir", tmp_path / "whole"])
    deepspeed_run("deepspeed_zero2.yaml", "train_unconditional.py",
                  [*flags, "--output_dir", tmp_path / "resumed", "--resume_from_checkpoint",
                   tmp_path / "whole" / "checkpoint-2"])
    for sub in ("unet", "unet_ema"):
        a, b = weights(tmp_path / "whole" / "checkpoint-4" / sub), weights(tmp_path / "resumed" / "checkpoint-4" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    text = tmp_path / "text"
    deepspeed_run("deepspeed_zero3.yaml", "train_text_to_image.py",
                  [*TINY, "--unet", TINY_TEXT_UNET, "--max_train_steps", 2, "--checkpointing_steps", 2,
                   "--validation_steps", 2, "--use_ema", "false", "--output_dir", text])
    shipped, trained = weights(text / "unet"), weights(text / "checkpoint-2" / "unet")  # no EMA: the same weights
    assert shipped.keys() == trained.keys() and all(torch.equal(shipped[k], trained[k]) for k in trained)


def test_the_gpu_benchmark_plans_every_row(tmp_path, capsys):
    """benchmarks/gpu.sh cannot run here: its shell is checked, and its plan (--dry-run) names every row, with the
    switches the trainer lacks as TODO rows and FSDP launched from configs/accelerate/fsdp.yaml."""
    import importlib.util

    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")]).returncode == 0
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    gpu.script_flags = lambda script: {"--config", "--compile"}  # as if --compile existed and --channels_last not
    bench = gpu.Bench(SimpleNamespace(smoke=False, dry_run=True, work=str(tmp_path)))
    for section in gpu.SECTIONS:
        getattr(bench, section)()
    table, printed = bench.table(), capsys.readouterr().out
    assert {row.split(" | ")[0].strip("| ") for row in table.splitlines()[6:]} == set(gpu.SECTIONS)
    training = [row for row in table.splitlines() if row.startswith("| training")]
    assert len(training) == 3 * 2 * 4  # presets × batches × switch combinations
    assert sum("TODO: the trainer has no --channels_last yet" in row for row in training) == 12
    assert sum("dry run" in row for row in training) == 12  # with and without --compile
    assert "--config_file configs/accelerate/fsdp.yaml --num_processes 1" in printed
    assert "train_unconditional.py --config configs/mnist_gpu.yaml --max_train_steps 60 --train_batch_size 256" \
           " --checkpointing_steps 1000000 --validation_steps 1000000 --save_model_epochs 1000000 --compile" in printed
