"""The flags of diffusers' example scripts: aliases parse to our options, and behaviours do what diffusers' do."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
from difftrain import config, text_config
from difftrain.data.images import INTERPOLATION_MODES, resize_shorter_side

TINY = ["--config", ROOT / "configs/tiny.yaml"]
SHORT = [*TINY, "--max_train_steps", 4, "--checkpointing_steps", 4, "--validation_steps", 100]


def test_aliases_mean_what_diffusers_means():
    cfg = config.parse(text_config.TextToImageConfig, ["--num_train_epochs", "7", "--validation_epochs", "3",
                                                  "--validation_prompt", "a cat", "--logger", "none"])
    assert (cfg.num_epochs, cfg.save_images_epochs, cfg.validation_prompts, cfg.report_to) == (7, 3, ["a cat"], "none")


def test_interpolation_modes_are_diffusers_names_and_change_the_resize():
    # torchvision's InterpolationMode names, which diffusers offers as --image_interpolation_mode choices
    assert set(INTERPOLATION_MODES) == {"nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos"}
    assert text_config.TextToImageConfig().image_interpolation_mode == "lanczos"  # diffusers' text-to-image default
    stripes = Image.fromarray((np.indices((30, 30)).sum(0) % 3 * 120).astype(np.uint8))
    out = {m: resize_shorter_side(stripes, 16, "L", True, m) for m in ("nearest", "bilinear", "lanczos")}
    assert not np.array_equal(out["nearest"], out["bilinear"]) and not np.array_equal(out["bilinear"], out["lanczos"])
    assert set(np.unique(out["nearest"])) <= {0, 120, 240}  # nearest copies pixels, never blends them


def test_scale_lr_multiplies_by_images_per_update(tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional(*SHORT, "--output_dir", out, "--scale_lr", "--learning_rate", 1e-4,
                               "--gradient_accumulation_steps", 2) == 0
    groups = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)["param_groups"]
    assert groups[0]["initial_lr"] == pytest.approx(1e-4 * 8 * 2)  # batch 8 (tiny.yaml) × accumulation 2 × 1 process
    assert "learning_rate: 0.0001" in (out / "training_config.yaml").read_text()  # the config keeps what was asked


def test_foreach_and_offloaded_ema_match_the_plain_ema(tmp_path, train_unconditional, capsys):
    plain, other = tmp_path / "plain", tmp_path / "other"
    assert train_unconditional(*SHORT, "--output_dir", plain, "--use_ema") == 0
    assert train_unconditional(*SHORT, "--output_dir", other, "--use_ema", "--foreach_ema", "--offload_ema",
                               "--allow_tf32") == 0
    a = load_file(plain / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    b = load_file(other / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)  # foreach ops round differently (1 ulp)
    printed = capsys.readouterr().out
    assert "--allow_tf32 changes CUDA matmuls only" in printed and "--offload_ema keeps the EMA in CPU" in printed


def test_dream_trains_epsilon_models_and_refuses_others(tmp_path, train_unconditional, capsys):
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "eps", "--dream_training",
                               "--prediction_type", "epsilon") == 0
    capsys.readouterr()
    assert train_unconditional(*SHORT, "--output_dir", tmp_path / "v", "--dream_training") == 2  # v by default
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epsilon prediction only" in err


@pytest.mark.parametrize("flags, message", [
    (["--non_ema_revision", "fp32"], "is a revision of --pretrained_model_name_or_path"),
    (["--non_ema_revision", "fp32", "--pretrained_model_name_or_path", "."], "local folder, which has no revisions"),
    (["--dream_detail_preservation", "0.5"], "--dream_training turns on"),
    (["--num_validation_images", "0"], "--num_validation_images must be at least 1"),
    (["--use_ema", "false", "--offload_ema"], "--offload_ema changes how the EMA is kept"),
])
def test_meaningless_combinations_are_one_line(flags, message):
    with pytest.raises(config.UserError, match=message):
        config.parse(text_config.TextToImageConfig, flags)


# ----------------------------------------------------------------------------------------------
# Every flag and every README command of diffusers' three scripts (tests/diffusers_example_flags.py)

from diffusers_example_flags import FLAGS, README_COMMANDS  # noqa: E402

SCHEMAS = {"train_unconditional": config.TrainConfig, "train_text_to_image": text_config.TextToImageConfig,
           "train_text_to_image_lora": text_config.LoraTextToImageConfig}
# values diffusers' parsers accept that need a context to mean something here
CONTEXT = {"dream_detail_preservation": ["--dream_training", "--prediction_type", "epsilon"],
           "offload_ema": ["--use_ema"], "foreach_ema": ["--use_ema"]}
VALUES = {"prediction_type": "epsilon", "resume_from_checkpoint": "latest", "report_to": "wandb",
          "validation_prompts": "a cat", "validation_prompt": "a cat", "image_column": "image",
          "caption_column": "text", "local_rank": "0"}


def a_value(name: str, spec: dict) -> list[str]:
    if spec["action"] == "store_true":
        return []
    if name in VALUES:
        return [VALUES[name]]
    if spec["choices"]:
        return [str(spec["choices"][0])]
    if spec["default"] is not None:
        return [str(spec["default"])]
    return [{int: "2", float: "0.5"}.get(spec["type"], "some-value")]


@pytest.mark.parametrize("script", list(FLAGS))
def test_every_flag_of_diffusers_scripts_is_accepted(script):
    base = [] if script == "train_unconditional" else ["--pretrained_model_name_or_path", "me/base-model"]
    refused = {}
    for name, spec in FLAGS[script].items():
        argv = [*base, *CONTEXT.get(name, []), f"--{name}", *a_value(name, spec)]
        try:
            config.parse(SCHEMAS[script], argv)
        except config.UserError as e:
            refused[name] = str(e)
    assert not refused


@pytest.mark.parametrize("script", list(README_COMMANDS))
def test_diffusers_readme_commands_parse_with_their_meaning(script, tmp_path):
    import shlex

    env = {"$MODEL_NAME": "CompVis/stable-diffusion-v1-4", "$DATASET_NAME": "lambdalabs/naruto-blip-captions",
           "$TRAIN_DIR": str(tmp_path), "<path-to-train-directory> <other-arguments>": str(tmp_path)}
    for command in README_COMMANDS[script]:
        for var, value in env.items():
            command = command.replace(var, value)
        argv = shlex.split(command)
        cfg = config.parse(SCHEMAS[script], argv)
        given = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
        for flag, value in given.items():
            field = {"num_train_epochs": "num_epochs", "validation_prompt": "validation_prompts",
                     "logger": "report_to"}.get(flag, flag)
            got = getattr(cfg, field)
            got = got[0] if isinstance(got, list) else got
            assert str(got) == value or (isinstance(got, float) and got == float(value)), flag
    if script == "train_text_to_image_lora":
        assert cfg.rank == 4 and cfg.learning_rate == 1e-4  # LoRA on, as diffusers' script always is
