"""img2img and inpainting in sample.py (--init_image, --strength, --mask_image, --repaint_jumps), on the single-image
overfit model, which reproduces red_circle(OVERFIT_SIZE) from noise; and a tiny Stable Diffusion inpainting UNet."""

import json
import shlex

import numpy as np
import pytest
from PIL import Image

import sample as script
from conftest import OVERFIT_SIZE, TINY_UNET_SIZE, psnr, red_circle, run_script, tiny_2d_unet


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
    edit, white = _half_mask(tmp_path, OVERFIT_SIZE)
    assert sample("--model", overfit_epsilon_model, *edit, "--num_images", 2, "--scheduler", "ddim",
                  "--output_dir", tmp_path / "out") == 0
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
    assert "drives an inpainting UNet with masked-image input only as Stable Diffusion's" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# RePaint's resampling jumps (--repaint_jumps)


def quiet_unet():
    """A random 8 px UNet whose v-predictions are small: its samples are near N(0, 1) pixels, mostly unclipped, so a
    change in how they are drawn shows in the images (a plain random UNet saturates them to 0 or 255)."""
    import torch

    unet = tiny_2d_unet(0)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
    return unet


@pytest.fixture(scope="module")
def random_pixel_model(tmp_path_factory):
    """A pipeline folder of quiet_unet: what is kept, and from which seed, needs no training."""
    from diffusers import DDPMScheduler

    folder = tmp_path_factory.mktemp("random") / "model"
    quiet_unet().save_pretrained(folder / "unet")
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    return folder


@pytest.mark.parametrize("steps, jump_length, jump_n_sample", [(5, 2, 2), (20, 10, 10), (7, 3, 4), (11, 10, 2)])
def test_repaint_steps_run_in_the_order_of_diffusers_repaint_schedule(steps, jump_length, jump_n_sample):
    from diffusers import RePaintScheduler

    from difftrain.repaint import step_order

    scheduler = RePaintScheduler(num_train_timesteps=steps)
    scheduler.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    denoised, last = [], steps  # diffusers lists counted-down steps; a rise is a jump back (undo_step)
    for t in scheduler.timesteps.tolist():
        if t < last:
            denoised.append(steps - 1 - t)
        last = t
    assert step_order(steps, jump_length, jump_n_sample - 1) == denoised


@pytest.mark.parametrize("name", ["ddpm", "euler_a"])
@pytest.mark.parametrize("level", [3, "end"])  # end: after the last step, the clean image
def test_a_jump_back_is_forward_diffusion_from_one_noise_level_to_the_other(name, level):
    import torch
    from diffusers import DDPMScheduler

    from difftrain.pipelines import image_generators
    from difftrain.repaint import Resampling
    from difftrain.schedulers import scheduler_from_training_config

    scheduler = scheduler_from_training_config(name, DDPMScheduler().config)
    scheduler.set_timesteps(10)
    timesteps, start, to = scheduler.timesteps[2:], 2, 1  # as img2img leaves them: the schedule from its step 2
    level = len(timesteps) if level == "end" else level
    x0, noise = torch.full((4, 3, 32, 32), 0.5), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if name == "ddpm":  # the sample at a level: sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε; its noise's std at `to`: sqrt(1 - ᾱ)
        alpha_bar = [scheduler.alphas_cumprod[int(t)] for t in timesteps] + [torch.tensor(1.0)]
        x, scale, std = alpha_bar[level].sqrt() * x0 + (1 - alpha_bar[level]).sqrt() * noise, alpha_bar[to].sqrt(), \
            (1 - alpha_bar[to]).sqrt()
    else:  # x0 + σ ε
        sigmas = scheduler.sigmas[start:]
        x, scale, std = x0 + sigmas[level] * noise, 1.0, sigmas[to]
    up = Resampling(jumps=1).renoise(scheduler, x, timesteps, start, level, to, image_generators([0, 1, 2, 3]))
    residual = up - scale * x0
    assert abs(residual.mean()) < 0.02 * std and abs(residual.std() / std - 1) < 0.02
    if name == "euler_a":  # the next step starts from the sigma it was sent back to
        assert scheduler.step_index == start + to


def _half_mask(folder, size):
    white = np.full((size, size, 3), 255, np.uint8)
    Image.fromarray(white).save(folder / "white.png")
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255  # repaint the left half
    Image.fromarray(mask).save(folder / "mask.png")
    return ["--init_image", folder / "white.png", "--mask_image", folder / "mask.png"], white


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "euler_a"])
def test_repaint_jumps_keep_the_known_region_change_the_rest_and_follow_each_seed(name):
    import torch
    from diffusers import DDPMScheduler

    from difftrain.pipelines import generate, unet_predictor
    from difftrain.repaint import Resampling
    from difftrain.schedulers import scheduler_from_training_config

    predict = unet_predictor(quiet_unet())
    config = DDPMScheduler(prediction_type="v_prediction").config
    shape = (3, TINY_UNET_SIZE, TINY_UNET_SIZE)
    init = torch.rand(2, *shape) * 2 - 1
    mask = torch.zeros(2, 1, TINY_UNET_SIZE, TINY_UNET_SIZE)
    mask[..., : TINY_UNET_SIZE // 2] = 1

    def run(images, repaint, strength=1.0):  # image k from seed k
        return generate(predict, scheduler_from_training_config(name, config), shape, images, 6, "cpu",
                        init=init[images], mask=mask[images], strength=strength, repaint=repaint)

    jumps, half = Resampling(jumps=1, jump_length=2), TINY_UNET_SIZE // 2
    for strength in (0.75, 1.0):  # 0.75: the schedule from its step 2 on (img2img), where Euler's step index starts
        jumped, plain = run([0, 1], jumps, strength), run([0, 1], None, strength)
        assert torch.equal(jumped[..., half:], init[..., half:])
        assert (jumped - plain)[..., :half].abs().amax(dim=(1, 2, 3)).gt(1e-3).all()  # both images resampled
    torch.testing.assert_close(run([1], jumps)[0], jumped[1])  # image 1 alone: the same


def test_sample_py_repaint_jumps_keep_the_known_pixels_record_and_regenerate(random_pixel_model, tmp_path):
    edit, white = _half_mask(tmp_path, TINY_UNET_SIZE)
    assert sample(*edit, "--model", random_pixel_model, "--scheduler", "ddpm", "--num_inference_steps", 6,
                  "--num_images", 2, "--repaint_jumps", 1, "--repaint_jump_length", 2, "--output_dir",
                  tmp_path / "jumps") == 0
    half = TINY_UNET_SIZE // 2
    for k in range(2):  # after the uint8 round trip; that jumps change the rest: the test above
        assert np.array_equal(read(tmp_path / "jumps", k)[:, half:], white[:, half:])
    record = json.loads((tmp_path / "jumps" / "metadata.jsonl").read_text().splitlines()[1])
    assert (record["repaint_jumps"], record["repaint_jump_length"]) == (1, 2)
    again = shlex.split(record["command"])[2:] + ["--output_dir", str(tmp_path / "again")]
    assert sample(*again) == 0  # image 1 of a batch of 2, alone: the same image
    assert np.array_equal(read(tmp_path / "again"), read(tmp_path / "jumps", 1))


@pytest.mark.parametrize("flags, message", [
    (["--scheduler", "dpm++2m"], "--repaint_jumps needs a single-step sampler (ddpm, ddim, euler and euler_a"),
    (["--scheduler", "heun"], "heun keeps a history that jumping back would invalidate"),
    (["--scheduler", "ddpm", "--num_inference_steps", 10], "this run denoises 10 (--num_inference_steps × "),
    (["--mask_image", None], "--repaint_jumps resamples what --mask_image marks for repainting; pass --init_image and"),
    (["--repaint_jumps", -1], "--repaint_jumps must be 0 or more"),
])
def test_repaint_jumps_refuse_what_cannot_jump_in_one_line(random_pixel_model, tmp_path, capsys, flags, message):
    edit, _ = _half_mask(tmp_path, TINY_UNET_SIZE)
    if flags[0] == "--mask_image":  # no mask: img2img only
        edit, flags = edit[:2], []
    assert sample("--model", random_pixel_model, *edit, "--repaint_jumps", 1, "--output_dir", tmp_path / "out",
                  *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# A Stable Diffusion inpainting UNet (9 channels: latents, mask, masked-image latents)


def test_an_sd_inpainting_unet_gets_the_mask_and_the_masked_image_latents_beside_the_latents(
        tiny_sd_inpainting_pipeline, tmp_path):
    import torch

    from difftrain.editing import load_edit
    from difftrain.inference_config import SampleConfig
    from difftrain.loading import load_model
    from difftrain.sampling import build_scheduler, sample_images

    edit_flags, _ = _half_mask(tmp_path, 16)
    photo = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    cfg = SampleConfig(model=str(tiny_sd_inpainting_pipeline), init_image=str(tmp_path / "photo.png"),
                       mask_image=str(edit_flags[3]), prompt=["a red circle"], num_inference_steps=2,
                       guidance_scale=7.5, scheduler="ddim")
    model = load_model(cfg.model, inpainting=True)
    edit = load_edit(cfg, model, "cpu")
    inputs = []
    model.unet.register_forward_pre_hook(lambda unet, args: inputs.append(args[0].clone()))
    scheduler, step_kwargs = build_scheduler("ddim", model, cfg)
    sample_images(model, scheduler, [0, 1], steps=2, batch_size=2, step_kwargs=step_kwargs, prompts=cfg.prompt,
                  negative_prompt=None, guidance_scale=7.5, device="cpu", edit=edit)
    # what diffusers' StableDiffusionInpaintPipeline gives it: the binary mask at latent size (8 px: its left half),
    # and the latents of the image with the repainted half zeroed (here the VAE's mean)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    masked = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    masked[..., :8] = 0
    with torch.no_grad():
        masked_latents = model.vae.encode(masked).latent_dist.mean * model.vae.config.scaling_factor
    assert len(inputs) == 2
    for x in inputs:  # guided: the unconditional and conditional halves of 2 images
        assert x.shape == (4, 9, 8, 8)
        assert torch.equal(x[:, 4:5], mask.expand(4, -1, -1, -1))
        torch.testing.assert_close(x[:, 5:], masked_latents.expand(4, -1, -1, -1), rtol=1e-4, atol=1e-5)
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)])
    assert torch.equal(inputs[0][:, :4], torch.cat([noise, noise]))  # first, the latents: at step 1, seed k's noise


def test_sample_py_inpaints_with_an_sd_inpainting_unet_and_refuses_it_without_a_mask(tiny_sd_inpainting_pipeline,
                                                                                     tmp_path, capsys):
    edit, _ = _half_mask(tmp_path, 16)
    common = ["--model", tiny_sd_inpainting_pipeline, "--prompt", "a red circle", "--num_inference_steps", 2,
              "--num_images", 2]
    assert sample(*common, *edit, "--output_dir", tmp_path / "out") == 0
    assert [read(tmp_path / "out", k).shape for k in range(2)] == [(16, 16, 3)] * 2
    record = json.loads((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()[0])
    assert record["mask_image"] == str(edit[3])
    capsys.readouterr()
    assert sample(*common, "--output_dir", tmp_path / "no-mask") == 2
    assert "an inpainting UNet with masked-image input (9 channels" in capsys.readouterr().err
    assert sample(*common, *edit, "--repaint_jumps", 1, "--num_inference_steps", 12, "--output_dir",
                  tmp_path / "jumps") == 2
    assert "this inpainting UNet sees the masked image instead" in capsys.readouterr().err
    assert not (tmp_path / "no-mask").exists() and not (tmp_path / "jumps").exists()
