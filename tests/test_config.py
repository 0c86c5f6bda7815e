import pytest
import yaml

from difftrain import config
from difftrain.config import TrainConfig
from difftrain.errors import UserError


def test_defaults_are_the_mnist_recipe():
    """configs/mnist.yaml spells out the defaults; the two must not drift apart."""
    assert config.parse(TrainConfig, []) == config.parse(TrainConfig, ["--config", "configs/mnist.yaml"])


def test_text_defaults_are_the_mnist_text_recipe():
    cls = config.TextToImageConfig
    assert config.parse(cls, []) == config.parse(cls, ["--config", "configs/mnist_text.yaml"])


def test_text_options_are_checked():
    for flags, message in ((["--caption_dropout", "1.0"], "--caption_dropout must be in"),
                           (["--cache_latents"], "--cache_latents needs a VAE")):
        with pytest.raises(UserError, match=message):
            config.parse(config.TextToImageConfig, flags)
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
    assert again == config.from_dict(TrainConfig, {**yaml.safe_load(text)})
    assert again.seed == 3


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        config.parse(TrainConfig, ["--help"])
    text = capsys.readouterr().out
    for name in config.fields_of(TrainConfig):
        assert f"--{name}" in text


def test_readme_documents_every_flag():
    readme = (__import__("conftest").ROOT / "README.md").read_text()
    missing = [name for name in config.fields_of(config.TextToImageConfig) if f"`--{name}`" not in readme]
    assert not missing, f"README flag table lacks {missing}"
