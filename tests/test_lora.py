"""LoRA fine-tuning (--rank) of a tiny Stable-Diffusion-format pipeline: adapters only, diffusers' file format,
exact resume, and sampling through load_lora_weights / sample.py --lora."""

import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from conftest import captioned_dataset, run_script
from test_train_text_to_image import sd_flags
from difftrain import lora

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return captioned_dataset(tmp_path_factory.mktemp("shapes") / "data", 16, copies=4)


def lora_flags(base, data, *extra):
    # the fine-tune flags of test_train_text_to_image, with LoRA on and a learning rate adapters move at in 4 steps
    return sd_flags(base, data, "--learning_rate", 5e-2, "--lr_warmup_steps", 0, "--rank", 4, "--lora_alpha", 8, *extra)


def images(pipe, seed=0):
    return pipe("a red circle", num_inference_steps=3, guidance_scale=1.0, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


def test_lora_trains_the_adapters_only_and_loads_with_load_lora_weights(tiny_sd_pipeline, shapes, tmp_path,
                                                                          train_text_to_image, monkeypatch):
    base = UNet2DConditionModel.from_pretrained(tiny_sd_pipeline, subfolder="unet").state_dict()
    saved_models = []
    real_save = lora.save
    monkeypatch.setattr(lora, "save", lambda unet, folder: (saved_models.append(
        {k: v.clone() for k, v in unet.state_dict().items()}), real_save(unet, folder)))
    out = tmp_path / "run"
    assert train_text_to_image(*lora_flags(tiny_sd_pipeline, shapes), "--output_dir", out) == 0

    # the base weights of the trained UNet are bit-identical to the pretrained ones; only adapters changed
    final = saved_models[-1]
    for name, tensor in base.items():
        key = name if name in final else name.replace(".weight", ".base_layer.weight").replace(".bias",
                                                                                            ".base_layer.bias")
        assert torch.equal(final[key], tensor), name
    adapters = load_file(out / lora.WEIGHT_NAME)
    assert adapters and all("lora" in k and k.startswith("unet.") for k in adapters)
    a = next(v for k, v in adapters.items() if "lora_A" in k or "lora.down" in k)
    assert a.shape[0] == 4  # --rank 4
    # the output folder and checkpoints hold adapters (and optimizer state), never a UNet
    assert not (out / "unet").exists() and not (out / "checkpoint-4" / "unet").exists()
    assert (out / "checkpoint-4" / lora.WEIGHT_NAME).is_file()
    optimizer = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    assert len(optimizer["state"]) == len(adapters)  # only the adapters reached the optimizer

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_pipeline, safety_checker=None)
    before = images(pipe)
    pipe.load_lora_weights(out)
    after = images(pipe)
    assert np.abs(after - before).max() > 1e-3  # the adapters change the base's images


def test_lora_resume_is_exact_with_ema(tiny_sd_pipeline, shapes, tmp_path, train_text_to_image):
    flags = lora_flags(tiny_sd_pipeline, shapes, "--use_ema", "--gradient_accumulation_steps", 2)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_text_to_image(*flags, "--output_dir", whole) == 0
    resumed.mkdir()
    os.system(f"cp -r {whole / 'checkpoint-2'} {resumed}/")
    assert train_text_to_image(*flags, "--output_dir", resumed, "--resume_from_checkpoint", "latest") == 0
    for name in (lora.WEIGHT_NAME, f"ema/{lora.WEIGHT_NAME}"):
        a, b = load_file(whole / "checkpoint-4" / name), load_file(resumed / "checkpoint-4" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    raw, ema = load_file(whole / "checkpoint-4" / lora.WEIGHT_NAME), load_file(whole / lora.WEIGHT_NAME)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the shipped adapters are the EMA's


def test_sample_with_lora_on_its_base_and_from_the_run_folder(tiny_sd_pipeline, shapes, tmp_path,
                                                              train_text_to_image):
    import sample as script
    from PIL import Image

    out = tmp_path / "run"
    assert train_text_to_image(*lora_flags(tiny_sd_pipeline, shapes), "--output_dir", out) == 0
    common = ["--prompt", "a red circle", "--num_images", 2, "--num_inference_steps", 3, "--guidance_scale", 1]

    def sample(folder, *extra):
        assert run_script(script, [*common, *extra, "--output_dir", tmp_path / folder]) == 0
        return np.stack([np.asarray(Image.open(tmp_path / folder / f"0000{i}.png")) for i in range(2)]).astype(int)

    plain = sample("base", "--model", tiny_sd_pipeline)
    with_lora = sample("lora", "--model", tiny_sd_pipeline, "--lora", out)
    from_run = sample("run", "--model", out)  # the run folder names its base in training_config.yaml
    half = sample("half", "--model", tiny_sd_pipeline, "--lora", out, "--lora_scale", 0.5)
    assert np.array_equal(with_lora, from_run)
    assert np.abs(with_lora - plain).max() > 0 and np.abs(half - with_lora).max() > 0


def test_rank_without_a_pretrained_model_is_one_line(tmp_path, train_text_to_image, capsys):
    assert train_text_to_image("--rank", 4, "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pretrained_model_name_or_path" in err
    assert train_text_to_image("--lora_alpha", 8, "--output_dir", tmp_path / "out") == 2
    assert "--rank" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lora_target_modules_that_match_nothing_are_named(tiny_sd_pipeline, shapes, tmp_path, train_text_to_image,
                                                           capsys):
    assert train_text_to_image(*lora_flags(tiny_sd_pipeline, shapes), "--lora_target_modules", "to_nothing",
                               "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "to_nothing" in err


def test_lora_push_uploads_the_adapters_and_a_card_naming_the_base(tiny_sd_pipeline, shapes, tmp_path,
                                                                   train_text_to_image, monkeypatch):
    from huggingface_hub.utils import filter_repo_objects

    from conftest import snapshot
    from difftrain import hub
    from test_hub import RecordingApi

    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    out = tmp_path / "run"
    assert train_text_to_image(*lora_flags(tiny_sd_pipeline, shapes), "--output_dir", out, "--push_to_hub",
                               "--hub_model_id", "me/tiny-lora") == 0
    upload = [kw for name, kw in RecordingApi.calls if name == "upload_folder"][-1]
    uploaded = set(filter_repo_objects(list(snapshot(out)), ignore_patterns=upload["ignore_patterns"]))
    assert {lora.WEIGHT_NAME, "README.md", "training_config.yaml"} <= uploaded
    assert not any(f.startswith("checkpoint-") for f in uploaded)
    card = (out / "README.md").read_text()
    assert f"base_model: {tiny_sd_pipeline}" in card and 'pipeline.load_lora_weights("me/tiny-lora")' in card
