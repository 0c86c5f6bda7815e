import dataclasses
import re

import pytest

from difftrain import autoguidance, config, text_config
from difftrain.config import TrainConfig
from difftrain.inference_config import SampleConfig
from difftrain.errors import UserError
from difftrain.unconditional_config import UnconditionalConfig


def test_defaults_are_the_mnist_recipe():
    """configs/mnist.yaml spells out the defaults; the two must not drift apart."""
    assert config.parse(TrainConfig, []) == config.parse(TrainConfig, ["--config", "configs/mnist.yaml"])


def test_text_defaults_are_the_mnist_text_recipe():
    cls = text_config.TextToImageConfig
    assert config.parse(cls, []) == config.parse(cls, ["--config", "configs/mnist_text.yaml"])


def test_text_options_are_checked():
    for flags, message in ((["--caption_dropout", "1.0"], "--caption_dropout must be in"),
                           (["--cache_latents"], "--cache_latents needs a VAE")):
        with pytest.raises(UserError, match=message):
            config.parse(text_config.TextToImageConfig, flags)
    with pytest.raises(UserError, match="unknown option '--caption_column'"):  # text options are not unconditional's
        config.parse(TrainConfig, ["--caption_column", "text"])


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.5\ntrain_batch_size: 3\nuse_ema: true\n")
    cfg = config.parse(TrainConfig, ["--config", str(path), "--train_batch_size", "7"])
    assert (cfg.learning_rate, cfg.train_batch_size, cfg.use_ema) == (0.5, 7, True)
    assert config.parse(TrainConfig, ["--config", str(path), "--use_ema", "false"]).use_ema is False
    assert config.parse(TrainConfig, ["--use_ema"]).use_ema is True


def test_diffusers_flag_aliases():
    cfg = config.parse(TrainConfig, ["--logger", "wandb", "--ddpm_num_inference_steps", "7", "--local_rank", "0"])
    assert (cfg.report_to, cfg.validation_inference_steps) == ("wandb", 7)
    # a derived schema's own default keeps the parent's flag names and help (options.redefault)
    text = config.parse(text_config.TextToImageConfig, ["--num_train_epochs", "3"])
    assert text.num_epochs == 3 and config.parse(text_config.TextToImageConfig, []).num_epochs == 2
    parent, child = (dataclasses.fields(c) for c in (TrainConfig, text_config.TextToImageConfig))
    assert [f.metadata for f in parent if f.name == "num_epochs"] == [f.metadata for f in child if f.name == "num_epochs"]


def test_unknown_yaml_key_names_the_nearest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rte: 0.1\n")
    with pytest.raises(UserError, match="learning_rte.*learning_rate"):
        config.parse(TrainConfig, ["--config", str(path)])


def test_unknown_flag_names_the_nearest():
    with pytest.raises(UserError, match="--train_bath_size.*--train_batch_size"):
        config.parse(TrainConfig, ["--train_bath_size", "4"])


@pytest.mark.parametrize("key,value", [("train_batch_size", "many"), ("use_ema", "maybe"),
                                       ("learning_rate", "[1]"), ("unet", "3")])
def test_bad_type_names_the_key(tmp_path, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(UserError, match=key):
        config.parse(TrainConfig, ["--config", str(path)])


def test_bad_values():
    with pytest.raises(UserError, match="--train_batch_size must be at least 1"):
        config.parse(TrainConfig, ["--train_batch_size", "0"])
    with pytest.raises(UserError, match="'cosin' is not one of"):
        config.from_dict(TrainConfig, {"lr_scheduler": "cosin"})


def test_unet_mapping_from_the_command_line():
    cfg = config.parse(TrainConfig, ["--unet", '{"block_out_channels": [8, 16], "layers_per_block": 1}'])
    assert cfg.unet == {"block_out_channels": [8, 16], "layers_per_block": 1}


def test_dump_round_trips_and_hides_the_token(tmp_path):
    cfg = config.parse(TrainConfig, ["--hub_token", "hf_secret", "--seed", "3"])
    config.dump(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "hf_secret" not in text and "hub_token" not in text
    again = config.parse(TrainConfig, ["--config", str(tmp_path / "c.yaml")])
    assert again == dataclasses.replace(cfg, hub_token=None)  # every option back as it was, but the secret
    assert again.seed == 3


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        config.parse(TrainConfig, ["--help"])
    text = capsys.readouterr().out
    for name in config.fields_of(TrainConfig):
        assert f"--{name}" in text


def test_readme_documents_every_flag():
    readme = (__import__("conftest").ROOT / "README.md").read_text()
    missing = [name for name in config.fields_of(text_config.TextToImageConfig) if f"`--{name}`" not in readme]
    assert not missing, f"README flag table lacks {missing}"


def _readme_defaults(section: str) -> dict:
    """{flag name: default cell} of the flag table rows in a README section."""
    rows = re.findall(r"^\| `--(\w+)`[^|]*\| ([^|]*) \|", section, flags=re.M)
    return {name: cell.strip() for name, cell in rows}


def test_readme_flag_tables_state_the_code_defaults():
    readme = (__import__("conftest").ROOT / "README.md").read_text()
    unconditional, text = readme.split("## Text-to-image", 1)
    for cls, section in ((TrainConfig, unconditional), (text_config.TextToImageConfig, text.split("## LoRA")[0])):
        documented = _readme_defaults(section)
        for name, f in config.fields_of(cls).items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if name in documented and isinstance(default, (int, float, str, bool, type(None))) \
                    and not f.metadata["secret"]:
                assert documented[name] == str(default), f"README says --{name} defaults to {documented[name]}"


def test_default_recipes_are_pinned():
    """The defaults the Quality section measured (README): changing one is a deliberate act, with new figures."""
    from difftrain.config import uses_ema
    from difftrain.text_config import TextToImageConfig

    cfg = TrainConfig()
    assert (cfg.resolution, cfg.num_epochs, cfg.train_batch_size, cfg.learning_rate, cfg.lr_warmup_steps) == \
        (28, 4, 32, 1e-3, 100)
    assert (cfg.ddpm_beta_schedule, cfg.prediction_type, uses_ema(cfg)) == ("squaredcos_cap_v2", None, True)
    assert cfg.unet["block_out_channels"] == [16, 32, 64] and cfg.unet["down_block_types"][-1] == "AttnDownBlock2D"
    assert cfg.unet["norm_num_groups"] == 8 and cfg.validation_steps == 500
    assert cfg.mixed_precision is None  # bf16 where native: tests/test_utils.py
    # the unconditional default's guide (a fraction of the run), its scale, its noise interval σ and its sampling steps
    assert (autoguidance.AUTOGUIDANCE_SNAPSHOT, autoguidance.AUTOGUIDANCE, autoguidance.GUIDANCE_INTERVAL,
            autoguidance.AUTOGUIDANCE_STEPS) == (0.15, 4.0, (0.28, 3.0), 100)
    assert SampleConfig().num_inference_steps is None  # unset: 100 autoguided (above), else 50
    # the default run conditions on 100 k-means clusters of its 14 px images (no autoguidance then), guided at 2
    from difftrain import clusters
    from difftrain.unconditional_config import autoguidance_snapshot, num_clusters

    default = UnconditionalConfig()
    assert (num_clusters(default), autoguidance_snapshot(default), clusters.CLUSTER_SIDE) == (100, 0.0, 14)
    classes = UnconditionalConfig(class_conditional=True)
    assert (classes.label_column, classes.label_dropout, classes.validation_guidance_scale) == ("label", 0.1, None)
    assert __import__("difftrain.classes").classes.CLASS_GUIDANCE == 2.0
    text = TextToImageConfig()
    assert text.num_epochs == 2 and text.train_batch_size == 64 and text.unet["addition_embed_type"] == "text" and uses_ema(text)
    assert config.grid_guidance(text.validation_guidance_scale, None) == 1.25
    assert config.grid_guidance(None, "sd") == 7.5 and config.grid_guidance(2.0, "sd") == 2.0
    assert text.unet["down_block_types"] == ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]
    assert not uses_ema(TextToImageConfig(pretrained_model_name_or_path="sd"))  # fine-tunes: off, as diffusers
    # the configs spell the defaults out
    for path, cls in (("configs/mnist.yaml", TrainConfig), ("configs/mnist_text.yaml", TextToImageConfig)):
        spelled = config.parse(cls, ["--config", str(__import__("conftest").ROOT / path)])
        for name in ("resolution", "num_epochs", "learning_rate", "ddpm_beta_schedule", "unet", "train_batch_size"):
            assert getattr(spelled, name) == getattr(cls(), name), (path, name)


@pytest.mark.parametrize("path", ["configs/mnist_gpu.yaml", "configs/mnist_text_gpu.yaml"])
def test_gpu_presets_parse_and_build(path):
    from diffusers import UNet2DConditionModel, UNet2DModel

    from difftrain.models import build_unet

    text = "text" in path
    cls = text_config.TextToImageConfig if text else TrainConfig
    cfg = config.parse(cls, ["--config", str(__import__("conftest").ROOT / path)])
    assert cfg.train_batch_size >= 256 and cfg.mixed_precision == "bf16"
    extra = {"cross_attention_dim": 384} if text else {}
    unet = build_unet(cfg.unet, resolution=cfg.resolution, channels=1,
                      model_cls=UNet2DConditionModel if text else UNet2DModel, **extra)
    assert sum(p.numel() for p in unet.parameters()) > 10_000_000


def test_edm_refuses_the_ddpm_only_flags_and_takes_the_ones_that_compose():
    with pytest.raises(UserError, match="--ddpm_beta_schedule, --rescale_betas_zero_snr"):
        config.parse(config.TrainConfig, ["--objective", "edm", "--ddpm_beta_schedule", "linear",
                                          "--rescale_betas_zero_snr"])
    with pytest.raises(UserError, match="--prediction_type"):
        config.parse(config.TrainConfig, ["--objective", "edm", "--prediction_type", "v_prediction"])
    cfg = config.parse(config.TrainConfig, ["--objective", "edm", "--snr_gamma", "5", "--noise_offset", "0.05",
                                            "--input_perturbation", "0.1"])
    assert (cfg.snr_gamma, cfg.noise_offset, cfg.input_perturbation) == (5.0, 0.05, 0.1)
