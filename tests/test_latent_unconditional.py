"""train_unconditional.py --vae_name_or_path: a UNet2DModel in a frozen VAE's latent space (a tiny AutoencoderKL or
VQModel, or the parameter-free MockAutoencoder), the LatentDiffusionPipeline it writes (diffusers' LDMPipeline for an
unconditional VQModel run), and sample.py and evaluate.py on it with no extra flags."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, psnr, red_circle, run_script
from difftrain import latents
from difftrain.data.images import to_model_range

TINY = ["--config", ROOT / "configs/tiny.yaml", "--mixed_precision", "no"]  # 16 px MNIST; UNet downsamples 2x
SHORT = ["--max_train_steps", 2, "--checkpointing_steps", 2, "--validation_steps", 2]
FEW_SAMPLES = ["--num_images", 4, "--num_inference_steps", 5]  # sample.py's own settings, nothing about the VAE


def test_mock_autoencoder_averages_blocks_and_saves_without_weights(tmp_path):
    image = torch.from_numpy(red_circle(16)).permute(2, 0, 1)  # uint8 CHW: a disc whose edge cuts 2x2 blocks
    x = to_model_range(image[None])
    vae = latents.MockAutoencoder(factor=2, in_channels=3)
    dist = vae.encode(x).latent_dist
    assert dist.parameters.shape == (1, 6, 8, 8) and latents.vae_factor(vae) == 2
    assert vae.config.latent_channels == 3 and vae.config.scaling_factor == 1.0 and vae.config.shift_factor is None
    assert torch.allclose(dist.sample(), dist.mean, atol=1e-5)  # a point distribution
    decoded = vae.decode(dist.mean).sample
    assert decoded.shape == x.shape
    # the best any 2x2-block code can do: every pixel replaced by its block's mean, so the squared error is the
    # mean within-block variance of the image (in [-1, 1], a range of 2)
    blocks = x.double().reshape(1, 3, 8, 2, 8, 2)
    mse = blocks.var(dim=(3, 5), unbiased=False).mean().item()
    assert mse > 0  # the disc's edge: not every block is flat
    expected = 10 * np.log10(2.0**2 / mse)
    assert psnr((decoded + 1) * 127.5, (x + 1) * 127.5) == pytest.approx(expected, abs=1e-3)
    # through the code every VAE goes through (UNet units: scaling 1, no shift)
    assert torch.allclose(latents.decode(vae, latents.encode_mean(vae, x)), decoded)

    vae4 = latents.MockAutoencoder(factor=4, in_channels=1)
    vae4.save_pretrained(tmp_path / "mock")
    loaded = latents.load_vae(str(tmp_path / "mock"))
    assert isinstance(loaded, latents.MockAutoencoder) and latents.vae_factor(loaded) == 4
    assert {k: loaded.config[k] for k in ("factor", "in_channels", "latent_channels", "block_out_channels")} == \
        {"factor": 4, "in_channels": 1, "latent_channels": 1, "block_out_channels": [1, 1, 1]}
    gray = x[:, :1]
    assert torch.equal(loaded.decode(loaded.encode(gray).latent_dist.mean).sample,
                       vae4.decode(vae4.encode(gray).latent_dist.mean).sample)
    with pytest.raises(ValueError, match="power of two"):
        latents.MockAutoencoder(factor=3)


@pytest.fixture(scope="module")
def mock_latent_run(tmp_path_factory, datasets_cache) -> Path:
    import train_unconditional

    out = tmp_path_factory.mktemp("latent-mock") / "run"
    assert run_script(train_unconditional, [*TINY, *SHORT, "--vae_name_or_path", "mock", "--output_dir", out]) == 0
    return out


def test_a_mock_latent_run_writes_its_vae_and_samples_with_sample_py(mock_latent_run, tmp_path):
    import sample
    from PIL import Image

    from difftrain.pipelines import LatentDiffusionPipeline

    out = mock_latent_run
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LatentDiffusionPipeline"
    assert index["vae"] == ["difftrain.latents", "MockAutoencoder"] and index["class_names"] is None
    assert (out / "vae" / "config.json").is_file() and (out / "scheduler").is_dir()
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert (unet["sample_size"], unet["in_channels"]) == (8, 1)  # 16 px grayscale, pooled 2x
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
    assert Image.open(out / "samples" / "step-2.png").height == 2 * 16  # the grid: decoded, pixel-sized images

    pipe = LatentDiffusionPipeline.from_pretrained(out)  # diffusers' loader finds the mock's class
    assert isinstance(pipe.vae, latents.MockAutoencoder)
    images = pipe(num_images=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 1)

    samples = tmp_path / "samples"
    assert run_script(sample, ["--model", out, *FEW_SAMPLES, "--output_dir", samples]) == 0
    pngs = sorted(samples.glob("0*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (16, 16) and Image.open(pngs[0]).mode == "L"
    # a checkpoint samples too: its VAE is the run folder's
    assert run_script(sample, ["--model", out / "checkpoint-2", "--num_images", 1, "--num_inference_steps", 2,
                               "--output_dir", tmp_path / "ckpt"]) == 0


def test_continuing_a_latent_run_keeps_its_vae(mock_latent_run, tmp_path):
    import train_unconditional

    out = tmp_path / "more"
    assert run_script(train_unconditional, [*TINY, "--max_train_steps", 1, "--validation_steps", 100,
                                            "--pretrained_model_name_or_path", mock_latent_run, "--output_dir", out]) == 0
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["difftrain.latents", "MockAutoencoder"]
    assert json.loads((out / "unet" / "config.json").read_text())["sample_size"] == 8


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A random-initialised AutoencoderKL, 2x downsampling, 1-channel images (MNIST) → 2 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vae") / "vae"
    AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=[8, 16], latent_channels=2, norm_num_groups=8,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                  sample_size=16).save_pretrained(folder)
    return folder


def test_a_cached_class_conditional_run_in_an_autoencoders_latent_space(tiny_vae, tmp_path, monkeypatch):
    import sample
    import train_unconditional
    from safetensors.torch import load_file

    out, cache = tmp_path / "run", tmp_path / "cache"
    assert run_script(train_unconditional, [*TINY, *SHORT, "--vae_name_or_path", tiny_vae, "--cache_latents",
                                            "--random_flip", "--cache_dir", cache, "--class_conditional",
                                            "--output_dir", out]) == 0
    cached = list((cache / "difftrain-latents").glob("*/latents.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (64, 2, 4, 8, 8)  # image and mirror; mean ‖ log-var
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["class_names"] == [str(d) for d in range(10)]
    saved, source = (load_file(f / "diffusion_pytorch_model.safetensors") for f in (out / "vae", tiny_vae))
    assert saved.keys() == source.keys() and all(torch.equal(saved[k], source[k]) for k in saved)
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert (unet["sample_size"], unet["in_channels"], unet["num_class_embeds"]) == (8, 2, 11)

    # a second run reads the cache: the VAE never encodes again
    monkeypatch.setattr(latents, "encode_distribution", lambda *a: pytest.fail("encoded again"))
    assert run_script(train_unconditional, [*TINY, *SHORT, "--vae_name_or_path", tiny_vae, "--cache_latents",
                                            "--random_flip", "--cache_dir", cache, "--class_conditional",
                                            "--output_dir", tmp_path / "again"]) == 0
    monkeypatch.undo()

    samples = tmp_path / "samples"
    assert run_script(sample, ["--model", out, *FEW_SAMPLES, "--output_dir", samples]) == 0
    records = [json.loads(line) for line in (samples / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[3]["class_label"] == "3"


@pytest.mark.parametrize("flags, message", [
    (["--mock_vae_factor", 4], "--mock_vae_factor sets the mock VAE's downsampling; pass --vae_name_or_path mock"),
    (["--vae_name_or_path", "mock", "--mock_vae_factor", 3], "--mock_vae_factor must be a power of two"),
    (["--cache_latents"], "--cache_latents needs a VAE"),
    # mock 4x, tiny UNet 2x: 12 px is not a multiple of 8
    (["--vae_name_or_path", "mock", "--mock_vae_factor", 4, "--resolution", 12],
     "--resolution 12 is not a multiple of 8 (the VAE downsamples 4x, the UNet 2x more); use --resolution 16."),
    (["--vae_name_or_path", "mock", "--resolution", 18], "is not a multiple of 4 (the VAE downsamples 2x"),
])
def test_latent_mistakes_are_one_line_and_write_nothing(flags, message, tmp_path, capsys):
    import train_unconditional

    out = tmp_path / "out"
    assert run_script(train_unconditional, [*TINY, *flags, "--output_dir", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory) -> Path:
    """A random-initialised VQModel, 2x downsampling, RGB (so 1-channel MNIST goes in as RGB): latent_channels 2,
    codebook vectors of 3 (what the UNet denoises), and diffusers' default scaling_factor 0.18215 (unused: LDM's
    VQ latents are unscaled)."""
    from diffusers import VQModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vq") / "vqvae"
    VQModel(in_channels=3, out_channels=3, block_out_channels=[8, 16], latent_channels=2, vq_embed_dim=3,
            num_vq_embeddings=16, norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16).save_pretrained(folder)
    return folder


def test_vq_latents_are_the_unscaled_pre_quantisation_latents(tiny_vq):
    from diffusers import VQModel

    raw = VQModel.from_pretrained(tiny_vq)
    assert raw.config.scaling_factor == pytest.approx(0.18215)
    vae = latents.load_vae(str(tiny_vq))
    assert isinstance(vae, VQModel) and vae.config.scaling_factor == 1.0 and latents.latent_channels(vae) == 3
    assert latents.load_vae(str(tiny_vq.parent)).config.vq_embed_dim == 3  # a pipeline folder holding vqvae/
    x = to_model_range(torch.from_numpy(red_circle(16)).permute(2, 0, 1)[None])
    with torch.no_grad():
        z = raw.encode(x).latents
        expected = raw.decode(z).sample
    assert z.shape == (1, 3, 8, 8)
    assert torch.equal(latents.encode_mean(vae, x), z)  # no scaling_factor applied
    sampled = latents.latents_from_distribution(vae.config, latents.encode_distribution(vae, x))
    assert torch.allclose(sampled, z, atol=1e-5)  # deterministic: a point distribution
    assert torch.equal(latents.decode(vae, latents.encode_mean(vae, x)), expected)  # decode quantises


@pytest.fixture(scope="module")
def vq_run(tiny_vq, tmp_path_factory, datasets_cache) -> Path:
    import train_unconditional

    out = tmp_path_factory.mktemp("latent-vq") / "run"
    assert run_script(train_unconditional, [*TINY, *SHORT, "--vae_name_or_path", tiny_vq, "--output_dir", out]) == 0
    return out


LDM_IN_A_CLEAN_PROCESS = """
import sys
from diffusers import LDMPipeline
pipe = LDMPipeline.from_pretrained(sys.argv[1])
images = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
assert images.shape == (2, 16, 16, 3), images.shape
assert not [m for m in sys.modules if m.startswith("difftrain")]
"""


def test_an_unconditional_vq_run_is_an_ldm_pipeline(vq_run, tmp_path):
    import subprocess
    import sys

    import yaml
    from diffusers import DDIMScheduler, LDMPipeline

    from difftrain.loading import load_model
    from difftrain.pipelines import generate, unet_predictor

    out = vq_run
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" and index["vqvae"] == ["diffusers", "VQModel"]
    assert not (out / "vae").exists() and not (out / "pipeline.py").exists()
    assert json.loads((out / "vqvae" / "config.json").read_text())["scaling_factor"] == 1.0
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert (unet["sample_size"], unet["in_channels"]) == (8, 3)  # the codebook vectors' size
    assert yaml.safe_load((out / "training_config.yaml").read_text())["image_mode"] == "RGB"  # MNIST into an RGB VAE
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LDM_IN_A_CLEAN_PROCESS, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    # LDMPipeline's image is the one difftrain samples from the same noise (DDIM, eta 0: no other randomness)
    pipe = LDMPipeline.from_pretrained(out)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np").images
    model = load_model(str(out))
    x = generate(unet_predictor(model.unet), DDIMScheduler.from_config(model.scheduler_config), model.image_shape,
                 [0], 3, "cpu")
    ours = (model.decode(x) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(theirs, ours, atol=1e-5)


def test_sample_py_samples_a_vq_run_and_its_checkpoint(vq_run, tmp_path):
    import sample
    from PIL import Image

    samples = tmp_path / "samples"
    assert run_script(sample, ["--model", vq_run, *FEW_SAMPLES, "--output_dir", samples]) == 0
    pngs = sorted(samples.glob("0*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (16, 16) and Image.open(pngs[0]).mode == "RGB"
    assert len((samples / "metadata.jsonl").read_text().splitlines()) == 4
    ckpt = tmp_path / "ckpt"
    assert run_script(sample, ["--model", vq_run / "checkpoint-2", "--num_images", 1, "--num_inference_steps", 2,
                               "--output_dir", ckpt]) == 0
    assert Image.open(next(ckpt.glob("0*.png"))).size == (16, 16)


def test_evaluate_py_scores_a_latent_run_at_its_image_size(vq_run, tmp_path, monkeypatch):
    import evaluate

    from difftrain import metrics

    sizes = set()

    def features(images_u8, **_):  # a stand-in for Inception (slow on a CPU) that notes the sizes it is shown
        images = np.asarray(images_u8, np.float32)
        sizes.add(images.shape[-1])
        return np.tile(images.reshape(len(images), -1)[:, :16], (1, metrics.FEATURE_DIM // 16)) / 255

    monkeypatch.setattr(metrics, "inception_features", features)
    out = tmp_path / "eval"
    # the reference: the training split (already decoded by the run), 4 images
    assert run_script(evaluate, ["--model", vq_run, "--split", "train", "--num_samples", 4, "--num_ref_samples", 4,
                                 "--kid_subsets", 2, "--num_inference_steps", 2, "--ref_stats", tmp_path / "ref.npz",
                                 "--output_dir", out]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["resolution"] == 16 and np.isfinite(result["fid"])  # the decoded images' size, not the latents'
    assert sizes == {16, 32}  # images and references at 16 px (32: the CPU estimate's probe), nothing at 8


def test_a_class_conditional_vq_run_is_our_latent_pipeline(tiny_vq, tmp_path):
    import train_unconditional
    from diffusers import VQModel

    from difftrain.pipelines import LatentDiffusionPipeline

    out, cache = tmp_path / "run", tmp_path / "cache"
    assert run_script(train_unconditional, [*TINY, *SHORT, "--vae_name_or_path", tiny_vq, "--class_conditional",
                                            "--cache_latents", "--cache_dir", cache, "--output_dir", out]) == 0
    cached = list((cache / "difftrain-latents").glob("*/latents.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (64, 1, 6, 8, 8)  # a point: latents ‖ log-variance floor
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LatentDiffusionPipeline" and index["vae"] == ["diffusers", "VQModel"]
    pipe = LatentDiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, VQModel) and pipe.vae.config.scaling_factor == 1.0
    images = pipe(class_labels=["7"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_a_vae_taking_neither_1_nor_3_channels_is_one_line(tmp_path, capsys):
    import train_unconditional
    from diffusers import VQModel

    vae = tmp_path / "vq2"
    VQModel(in_channels=2, out_channels=2, block_out_channels=[8], latent_channels=2, num_vq_embeddings=4,
            norm_num_groups=8).save_pretrained(vae)
    out = tmp_path / "out"
    assert run_script(train_unconditional, [*TINY, "--vae_name_or_path", vae, "--output_dir", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the VAE takes 2-channel images" in err, err
    assert not out.exists()
