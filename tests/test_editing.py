"""img2img and inpainting in sample.py (--init_image, --strength, --mask_image), on the single-image overfit model,
which reproduces red_circle(OVERFIT_SIZE) from noise."""

import json
import shlex

import numpy as np
import pytest
from PIL import Image

import sample as script
from conftest import OVERFIT_SIZE, psnr, red_circle, run_script


def sample(*argv) -> int:
    return run_script(script, argv)


def read(folder, k=0) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{k:05d}.png"))


@pytest.fixture
def noisy_circle(tmp_path):
    rng = np.random.default_rng(0)
    noisy = np.clip(red_circle(OVERFIT_SIZE).astype(int) + rng.normal(0, 60, (OVERFIT_SIZE, OVERFIT_SIZE, 3)), 0, 255)
    path = tmp_path / "noisy.png"
    Image.fromarray(noisy.astype(np.uint8)).save(path)
    return path


def test_strength_0_returns_the_init_image(overfit_epsilon_model, noisy_circle, tmp_path):
    assert sample("--model", overfit_epsilon_model, "--init_image", noisy_circle, "--strength", 0, "--num_images", 2,
                  "--output_dir", tmp_path / "out") == 0
    assert np.array_equal(read(tmp_path / "out"), np.asarray(Image.open(noisy_circle)))


def test_strength_half_pulls_a_noisy_copy_toward_what_the_model_learned(overfit_epsilon_model, noisy_circle,
                                                                       tmp_path):
    assert sample("--model", overfit_epsilon_model, "--init_image", noisy_circle, "--strength", 0.5, "--num_images", 4,
                  "--scheduler", "ddim", "--output_dir", tmp_path / "out") == 0
    before = psnr(np.asarray(Image.open(noisy_circle)), red_circle(OVERFIT_SIZE))
    after = [psnr(read(tmp_path / "out", k), red_circle(OVERFIT_SIZE)) for k in range(4)]
    print("PSNR dB: noisy copy", round(before, 1), "after strength 0.5", [round(a, 1) for a in after])
    assert min(after) > before + 3
    record = json.loads((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()[1])
    assert (record["init_image"], record["strength"], record["mask_image"]) == (str(noisy_circle), 0.5, None)
    again = shlex.split(record["command"])[2:] + ["--output_dir", str(tmp_path / "again")]
    assert sample(*again) == 0  # the regenerate command makes the same image
    assert np.array_equal(read(tmp_path / "again"), read(tmp_path / "out", 1))


def test_inpainting_keeps_the_unmasked_pixels_and_repaints_the_rest(overfit_epsilon_model, tmp_path):
    white = np.full((OVERFIT_SIZE, OVERFIT_SIZE, 3), 255, np.uint8)
    Image.fromarray(white).save(tmp_path / "white.png")
    mask = np.zeros((OVERFIT_SIZE, OVERFIT_SIZE), np.uint8)
    mask[:, : OVERFIT_SIZE // 2] = 255  # repaint the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert sample("--model", overfit_epsilon_model, "--init_image", tmp_path / "white.png", "--mask_image",
                  tmp_path / "mask.png", "--num_images", 2, "--scheduler", "ddim", "--output_dir", tmp_path / "out") == 0
    out = read(tmp_path / "out").astype(int)
    assert np.array_equal(out[:, OVERFIT_SIZE // 2 :], white[:, OVERFIT_SIZE // 2 :])
    assert np.abs(out[:, : OVERFIT_SIZE // 2] - 255).mean() > 20  # the circle's left half comes back


@pytest.mark.parametrize("flags, message", [
    (["--mask_image", "m.png"], "--mask_image marks what to repaint in --init_image; pass --init_image too"),
    (["--strength", "0.5"], "--strength says how much of --init_image to redraw"),
    (["--init_image", "missing.png"], "--init_image missing.png: no such file or folder"),
    (["--init_image", "x", "--strength", "1.5"], "--strength must be in [0, 1] (got 1.5)"),
])
def test_misuse_is_one_line(overfit_epsilon_model, tmp_path, capsys, flags, message):
    assert sample("--model", overfit_epsilon_model, "--output_dir", tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_inpainting_unet_with_masked_image_input_is_refused_in_one_line(tmp_path, capsys):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path / "inpaint-unet"
    UNet2DModel(sample_size=8, in_channels=9, out_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")
                ).save_pretrained(folder / "unet")
    DDPMScheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    assert sample("--model", folder, "--output_dir", tmp_path / "out") == 2
    assert "an inpainting UNet with masked-image input" in capsys.readouterr().err
