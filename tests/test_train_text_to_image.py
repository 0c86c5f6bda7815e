"""End-to-end runs of train_text_to_image.py on tiny models (real training, CPU): (a) from scratch on built-in
captioned MNIST with the shipped MiniLM encoder, (b) fine-tuning a tiny Stable-Diffusion-format pipeline."""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from conftest import ROOT, snapshot
from difftrain.pipelines import TextToImagePipeline
from difftrain.loading import load_model

TINY = ["--config", ROOT / "configs/tiny.yaml"]
TINY_TEXT_UNET = ('{"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, '
                  '"attention_head_dim": 2, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], '
                  '"up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}')
PROMPTS = ["--validation_prompts", "a handwritten digit one", "the number 2"]


def weights(folder, name="diffusion_pytorch_model.safetensors"):
    return load_file(os.path.join(folder, name))


@pytest.fixture(scope="module")
def mnist_text_run(tmp_path_factory):
    """~20 steps from scratch on built-in MNIST captions, conditioned on the shipped MiniLM encoder."""
    import train_text_to_image as script
    from conftest import run_script

    out = tmp_path_factory.mktemp("t2i") / "run"
    assert run_script(script, [*TINY, "--output_dir", out, "--unet", TINY_TEXT_UNET, *PROMPTS]) == 0
    return out


def test_scratch_run_loads_and_guidance_changes_the_image(mnist_text_run):
    out = mnist_text_run
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "TextToImagePipeline" and index["vae"] == [None, None]
    pipe = TextToImagePipeline.from_pretrained(out)
    assert type(pipe.text_encoder).__name__ == "BertModel" and pipe.unet.config.cross_attention_dim == 384
    one = pipe("a handwritten digit three", guidance_scale=1.0, num_inference_steps=8, output_type="np").images
    three = pipe("a handwritten digit three", guidance_scale=3.0, num_inference_steps=8, output_type="np").images
    again = pipe("a handwritten digit three", guidance_scale=3.0, num_inference_steps=8, output_type="np").images
    assert one.shape == (1, 16, 16, 1) and np.array_equal(three, again)  # same seed, same image
    assert np.abs(one - three).mean() > 1e-3  # guidance changes it
    # the text encoder is saved in its own dtype, identical to the shipped weights
    from difftrain.text import default_text_encoder_path

    shipped = load_file(os.path.join(default_text_encoder_path(), "model.safetensors"))
    saved = weights(out / "text_encoder", "model.safetensors")
    common = [k for k in saved if k in shipped]
    assert common and all(torch.equal(saved[k], shipped[k]) for k in common)
    grid = out / "samples" / "step-20.png"
    from PIL import Image

    assert Image.open(grid).size == (2 * 16, 2 * 16)  # eval_batch_size 4 → 2 images per prompt, one column each


def test_sample_py_generates_from_a_text_run_and_its_checkpoints(mnist_text_run, tmp_path):
    import sample as script
    from conftest import run_script

    for model in (mnist_text_run, mnist_text_run / "checkpoint-10"):
        out = tmp_path / model.name
        assert run_script(script, ["--model", model, "--prompt", "a handwritten digit three", "--guidance_scale", 3,
                                   "--num_images", 2, "--num_inference_steps", 4, "--output_dir", out]) == 0
        records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in records] == ["a handwritten digit three"] * 2
        assert records[0]["guidance_scale"] == 3.0
        assert "--guidance_scale 3.0" in records[0]["command"]
    # unset: the scale the run drew its grids at (its --validation_guidance_scale), not Stable Diffusion's 7.5
    out = tmp_path / "default-guidance"
    assert run_script(script, ["--model", mnist_text_run / "checkpoint-10", "--prompt", "a handwritten digit three",
                               "--num_images", 1, "--num_inference_steps", 2, "--output_dir", out]) == 0
    record = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert record["guidance_scale"] == 1.25 and "--guidance_scale 1.25" in record["command"]


def test_missing_caption_column_is_one_line_and_keeps_the_folder(mnist_text_run, train_text_to_image, tmp_path,
                                                                  capsys):
    before = snapshot(mnist_text_run)
    assert train_text_to_image(*TINY, "--output_dir", mnist_text_run, "--caption_column", "caption",
                               "--resume_from_checkpoint", "latest") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--caption_column 'caption' not in the dataset" in err and "text" in err
    assert snapshot(mnist_text_run) == before


def test_bad_captions_name_the_row(tmp_path, train_text_to_image, capsys):
    import datasets
    from PIL import Image

    image = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    for captions, why in ((["ok", ""], "row 1: empty caption"), (["ok", "fine", None], "row 2: expected a string")):
        folder = tmp_path / why.split(":")[0].replace(" ", "")
        datasets.Dataset.from_dict({"image": [image] * len(captions), "text": captions}).save_to_disk(str(folder))
        capsys.readouterr()
        assert train_text_to_image(*TINY, "--dataset_name", folder, "--output_dir", tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# (b) Fine-tuning a Stable-Diffusion-format pipeline


def sd_flags(pretrained, data, *extra):
    return ["--pretrained_model_name_or_path", pretrained, "--dataset_name", data, "--caption_column", "text",
            "--resolution", 16, "--train_batch_size", 2, "--max_train_steps", 4, "--checkpointing_steps", 2,
            "--validation_steps", 4, "--validation_inference_steps", 3, "--eval_batch_size", 2,
            "--validation_prompts", "a red circle", "--learning_rate", 1e-3, "--lr_scheduler", "cosine",
            "--lr_warmup_steps", 1, "--report_to", "none", "--seed", 0, "--mixed_precision", "no", *extra]


def test_finetune_sd_resume_is_exact_and_writes_a_stable_diffusion_folder(tiny_sd_pipeline, shapes_16px, tmp_path,
                                                                          train_text_to_image):
    flags = sd_flags(tiny_sd_pipeline, shapes_16px, "--prediction_type", "v_prediction", "--use_ema",
                     "--random_flip", "--gradient_accumulation_steps", 2)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_text_to_image(*flags, "--output_dir", whole) == 0
    resumed.mkdir()
    os.system(f"cp -r {whole / 'checkpoint-2'} {resumed}/")
    assert train_text_to_image(*flags, "--output_dir", resumed, "--resume_from_checkpoint", "latest") == 0
    for sub in ("unet", "unet_ema"):
        a, b = weights(whole / "checkpoint-4" / sub), weights(resumed / "checkpoint-4" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    base = UNet2DConditionModel.from_pretrained(tiny_sd_pipeline, subfolder="unet")
    trained = weights(whole / "unet")
    assert any(not torch.equal(trained[k], v) for k, v in base.state_dict().items())  # the UNet did train

    pipe = StableDiffusionPipeline.from_pretrained(whole)
    # the scheduler trained with (v_prediction, the base's betas), not the base's epsilon PNDM; no latent clipping
    assert pipe.scheduler.config.prediction_type == "v_prediction" and not pipe.scheduler.config.clip_sample
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    # frozen parts are written byte-identical to the base's, in its dtype
    for part, name in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = weights(tiny_sd_pipeline / part, name), weights(whole / part, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), part
    image = pipe("a red circle", num_inference_steps=3, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    import sample as script
    from conftest import run_script
    from PIL import Image

    assert run_script(script, ["--model", whole, "--prompt", "a red circle", "--guidance_scale", 3, "--num_images", 2,
                               "--num_inference_steps", 3, "--scheduler", "dpm++2m", "--output_dir", tmp_path / "s"]) == 0
    assert Image.open(tmp_path / "s" / "00001.png").size == (16, 16)  # decoded from 8x8 latents by the VAE


@pytest.mark.parametrize("mixed_precision", ["bf16"])
def test_finetune_sd_in_bf16_with_cached_latents_keeps_fp32_parts(tiny_sd_pipeline, shapes_16px, tmp_path,
                                                                   train_text_to_image, mixed_precision):
    out = tmp_path / "run"
    assert train_text_to_image(*sd_flags(tiny_sd_pipeline, shapes_16px, "--mixed_precision", mixed_precision,
                                         "--cache_latents", "--random_flip", "--checkpoints_total_limit", 1),
                               "--output_dir", out) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    # the checkpoint samples with its own training scheduler: latents are not clipped to [-1, 1]
    assert load_model(str(out / "checkpoint-4")).scheduler_config["clip_sample"] is False
    for part, name in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"),
                       ("unet", "diffusion_pytorch_model.safetensors")):
        assert {t.dtype for t in weights(out / part, name).values()} == {torch.float32}, part


def test_grayscale_data_trains_through_an_rgb_vae(tiny_sd_pipeline, tmp_path, train_text_to_image):
    """Built-in MNIST is 1-channel; with a 3-channel VAE the images are decoded as RGB (--image_mode auto)."""
    out = tmp_path / "run"
    assert train_text_to_image(*TINY, "--pretrained_model_name_or_path", tiny_sd_pipeline, "--output_dir", out,
                               "--max_train_steps", 2, "--validation_steps", 2, "--validation_prompts", "a 3",
                               "--checkpointing_steps", 100) == 0
    assert yaml.safe_load((out / "training_config.yaml").read_text())["image_mode"] == "RGB"


def test_sd_folder_missing_a_component_is_named(tiny_sd_pipeline, shapes_16px, tmp_path, train_text_to_image, capsys):
    broken = tmp_path / "broken"
    os.system(f"cp -r {tiny_sd_pipeline} {broken} && rm -r {broken / 'vae'}")
    assert train_text_to_image(*sd_flags(broken, shapes_16px), "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no vae/ folder" in err


def test_lora_on_our_own_pipeline_loads_with_load_lora_weights(mnist_text_run, tmp_path, train_text_to_image):
    out = tmp_path / "lora"
    assert train_text_to_image(*TINY, *PROMPTS, "--pretrained_model_name_or_path", mnist_text_run, "--rank", 2,
                               "--max_train_steps", 2, "--learning_rate", 0.05, "--lr_warmup_steps", 0,
                               "--validation_steps", 2, "--checkpointing_steps", 100, "--output_dir", out) == 0
    assert not (out / "text_encoder").exists()  # the frozen parts are the base's: not copied into a LoRA run
    pipe = TextToImagePipeline.from_pretrained(mnist_text_run)
    before = pipe("a handwritten digit three", guidance_scale=1.0, num_inference_steps=4, output_type="np").images
    pipe.load_lora_weights(out)
    after = pipe("a handwritten digit three", guidance_scale=1.0, num_inference_steps=4, output_type="np").images
    assert np.abs(after - before).max() > 1e-3
