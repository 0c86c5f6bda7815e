"""A new user's mistakes (issue 13's trial): each is one line naming what is wrong, exit code 2, and the output
folder byte-identical (or never created)."""

import pytest

from conftest import ROOT, run_script, snapshot

TINY = ["--config", ROOT / "configs/tiny.yaml"]
TEXT_UNET_WITHOUT_TEXT = ('{"block_out_channels": [16, 32], "norm_num_groups": 8, "mid_block_type": null, '
                          '"down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}')
CASES = [  # (script, flags, fragment of the one line)
    ("train_unconditional", ["--learning_rate", "nan"], "--learning_rate must be a positive number (got nan)"),
    ("train_unconditional", ["--adam_beta1", "1.5"], "--adam_beta1 must be in [0, 1) (got 1.5)"),
    ("train_unconditional", ["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0"),
    ("train_unconditional", ["--seed", "-1"], "--seed must be in [0, 2**32)"),
    ("train_unconditional", ["--seed", "99999999999"], "--seed must be in [0, 2**32)"),
    ("train_unconditional", ["--snr_gamma", "-1"], "--snr_gamma must be > 0"),
    ("train_unconditional", ["--lr_warmup_steps", "-5"], "--lr_warmup_steps must be >= 0"),
    ("train_unconditional", ["--logging_steps", "0"], "--logging_steps must be at least 1 or left unset (got 0)"),
    ("train_unconditional", ["--output_dir", ""], "--output_dir is empty"),
    ("train_unconditional", ["--mixed_precision", "fp8"], "invalid choice: 'fp8'"),
    ("train_unconditional", ["--resolution"], "argument --resolution: expected one argument"),
    ("train_unconditional", ["--unet", '{"block_out_channels": [16, 32], "norm_num_groups": 8, '
                             '"down_block_types": ["NoSuchBlock2D", "DownBlock2D"], '
                             '"up_block_types": ["UpBlock2D", "UpBlock2D"]}'],
     "--unet: diffusers cannot build this UNet2DModel (NoSuchBlock2D does not exist.)"),
    ("train_unconditional", ["--unet", '{"block_out_channels": [16, 30], "norm_num_groups": 8, '
                             '"down_block_types": ["DownBlock2D", "DownBlock2D"], '
                             '"up_block_types": ["UpBlock2D", "UpBlock2D"]}'],
     "num_channels (30) must be divisible by num_groups (8)"),
    ("train_unconditional", ["--unet", "{block_out_channels: [16"], "unet: not a valid YAML/JSON mapping"),
    ("train_unconditional", ["--objective", "edm", "--ddpm_beta_schedule", "linear"],
     "--objective edm has its own noise levels"),
    ("train_text_to_image", ["--validation_prompts", ""], "--validation_prompts is empty or holds a blank prompt"),
    ("train_text_to_image", ["--unet", TEXT_UNET_WITHOUT_TEXT], "--unet has no cross-attention block"),
    ("train_text_to_image", ["--rank", "4"], "--rank trains LoRA adapters on a pretrained UNet"),
]


@pytest.mark.parametrize("script, flags, message", CASES, ids=[" ".join(c[1])[:40] for c in CASES])
def test_one_line_and_nothing_written(tmp_path, capsys, script, flags, message):
    module = __import__(script)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    code = run_script(module, [*TINY, "--output_dir", out, *flags] if flags[:2] != ["--output_dir", ""] else
                      [*TINY, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err[-1:]
    assert len([line for line in err if line.startswith(("error", "usage", "Traceback"))]) == 1
    assert snapshot(out) == before


def test_an_unwritable_output_dir_is_found_before_decoding(tmp_path, capsys, monkeypatch):
    import train_unconditional
    from difftrain import data

    monkeypatch.setattr(data, "load_source_dataset", lambda cfg: pytest.fail("decoded before checking the folder"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_script(train_unconditional, [*TINY, "--output_dir", blocker / "run"]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_evaluate_leaves_no_empty_folder_on_error(tmp_path, capsys):
    import evaluate

    out = tmp_path / "eval" / "here"
    assert run_script(evaluate, ["--samples_dir", tmp_path / "nothing-here", "--output_dir", out]) == 2
    capsys.readouterr()
    assert not (tmp_path / "eval").exists()


def test_two_config_files_merge_in_order(tmp_path):
    from difftrain import config

    (tmp_path / "a.yaml").write_text("learning_rate: 0.01\ntrain_batch_size: 4\n")
    (tmp_path / "b.yaml").write_text("learning_rate: 0.02\n")
    cfg = config.parse(config.TrainConfig, ["--config", str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml")])
    assert (cfg.learning_rate, cfg.train_batch_size) == (0.02, 4)

