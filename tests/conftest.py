"""Shared fixtures and helpers: offline, one datasets cache per session, fresh Accelerate state per test, tiny
models, data and runs."""

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/, the scripts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory):
    """Built-in datasets are written once per session (not into the user's ~/.cache)."""
    cache = tmp_path_factory.mktemp("hf-datasets")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = Path(cache)
    return cache


def reset_accelerate():
    """Accelerate's state is a per-process singleton; each in-process run starts as a new process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_script(module, argv) -> int:
    """Run a script's main in-process, as `python script.py argv` would (UserError → exit code 2)."""
    from difftrain.cli import run

    reset_accelerate()
    try:
        return run(module.main, [str(a) for a in argv])
    finally:
        reset_accelerate()


@pytest.fixture
def train_unconditional():
    import train_unconditional as script

    def train(*argv):
        return run_script(script, argv)

    return train


TINY = ["--config", ROOT / "configs/tiny.yaml"]  # the tiny preset: 16 px MNIST, seconds per run on a CPU
SHORT = [*TINY, "--max_train_steps", 3, "--validation_steps", 100, "--checkpointing_steps", 100]


@pytest.fixture
def finished_run(tmp_path, train_unconditional):
    """A finished tiny run (10 updates): a folder that holds a run."""
    out = tmp_path / "run"
    assert train_unconditional(*TINY, "--output_dir", out, "--max_train_steps", 10) == 0
    return out


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, datasets_cache):
    """Three updates of the tiny config (SHORT), seed 0: the reference that runs with other options compare with."""
    import train_unconditional as script

    out = tmp_path_factory.mktemp("short") / "a"
    assert run_script(script, [*SHORT, "--output_dir", out]) == 0
    return out


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under folder: to prove an error left it as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def red_circle(size: int = 32) -> np.ndarray:
    """HWC uint8: a red disc on white, the single-image overfit target."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    inside = (yy - c) ** 2 + (xx - c) ** 2 <= (size * 0.3) ** 2
    img = np.full((size, size, 3), 255, np.uint8)
    img[inside] = (220, 20, 20)
    return img


TINY_UNET_SIZE = 8


def tiny_unet(seed: int, cls=None, **extra):
    """A random-initialised 8 px, 3-channel UNet (a UNet2DModel unless cls says otherwise), in eval mode."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return (cls or UNet2DModel)(sample_size=TINY_UNET_SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                norm_num_groups=4, layers_per_block=1, **extra).eval()


def tiny_2d_unet(seed: int = 0):
    """tiny_unet without attention blocks."""
    return tiny_unet(seed, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12)))


OVERFIT_SIZE = 8  # the smallest size that still shows a disc; 16 px needs ~4x the CPU time for the same PSNR
OVERFIT_UNET = ('{"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,'
                ' "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}')


def train_overfit(data_dir, out, prediction_type="epsilon", steps=600, extra=()) -> Path:
    """Train a small UNet on one image (64 copies per batch, so a batch holds 64 noise levels of it)."""
    import train_unconditional as script

    assert run_script(script, [
        "--dataset_name", data_dir, "--output_dir", out, "--resolution", OVERFIT_SIZE, "--unet", OVERFIT_UNET,
        "--prediction_type", prediction_type, "--train_batch_size", 64, "--max_train_steps", steps,
        "--learning_rate", 2e-3, "--lr_scheduler", "constant", "--lr_warmup_steps", 0, "--use_ema",
        "--checkpointing_steps", 10_000, "--validation_steps", 10_000, "--save_model_epochs", 10_000,
        "--report_to", "none", "--seed", 0, "--mixed_precision", "no", *extra,
    ]) == 0
    return Path(out)


@pytest.fixture(scope="session")
def one_image_dataset(tmp_path_factory, datasets_cache):
    import datasets
    from PIL import Image

    folder = tmp_path_factory.mktemp("one-image") / "data"
    image = Image.fromarray(red_circle(OVERFIT_SIZE))
    datasets.Dataset.from_dict({"image": [image] * 64}, features=datasets.Features(image=datasets.Image())
                               ).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="session")
def overfit_epsilon_model(tmp_path_factory, one_image_dataset) -> Path:
    """A pipeline folder that reproduces red_circle(OVERFIT_SIZE): trained once per session, shared."""
    return train_overfit(one_image_dataset, tmp_path_factory.mktemp("overfit") / "eps")


@pytest.fixture
def train_text_to_image():
    import train_text_to_image as script

    def train(*argv):
        return run_script(script, argv)

    return train


def blue_square(size: int = 32) -> np.ndarray:
    """HWC uint8: a blue square on white, the second image of the conditional overfit test."""
    img = np.full((size, size, 3), 255, np.uint8)
    lo, hi = round(size * 0.2), round(size * 0.8)
    img[lo:hi, lo:hi] = (20, 40, 220)
    return img


def captioned_dataset(folder: Path, size: int, copies: int = 32) -> Path:
    """A save_to_disk dataset: `copies` × (red circle, "a red circle") and (blue square, "a blue square")."""
    import datasets
    from PIL import Image

    pairs = [(Image.fromarray(red_circle(size)), "a red circle"), (Image.fromarray(blue_square(size)), "a blue square")]
    rows = pairs * copies
    datasets.Dataset.from_dict({"image": [r[0] for r in rows], "text": [r[1] for r in rows]},
                               features=datasets.Features(image=datasets.Image(), text=datasets.Value("string"))
                               ).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def shapes_16px(tmp_path_factory):
    """The captioned red circles and blue squares at 16 px, 4 copies each: fine-tuning data for tiny_sd_pipeline."""
    return captioned_dataset(tmp_path_factory.mktemp("shapes") / "data", 16, copies=4)


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer made here (letters and digits, no merges): no download needed."""
    import string

    from transformers import CLIPTokenizer

    vocab = {}
    for c in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def make_tiny_sd_pipeline(folder: Path, unet_in_channels: int = 4) -> Path:
    """A Stable-Diffusion-format folder (StableDiffusionPipeline.save_pretrained) of random-initialised tiny parts:
    UNet2DConditionModel, AutoencoderKL (2x downsampling), CLIPTextModel and a locally made CLIP tokenizer, and a
    PNDMScheduler as Stable Diffusion ships. unet_in_channels 9: an inpainting UNet (latents, mask, masked image)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1))
    vae = AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=unet_in_channels, out_channels=4,
                                block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                cross_attention_dim=16, attention_head_dim=2,
                                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                              steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory) -> Path:
    """make_tiny_sd_pipeline's text-to-image folder."""
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def tiny_sd_inpainting_pipeline(tmp_path_factory) -> Path:
    """make_tiny_sd_pipeline's folder with a 9-channel inpainting UNet, as stable-diffusion-inpainting ships."""
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd-inpainting") / "pipeline", unet_in_channels=9)
