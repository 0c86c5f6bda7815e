"""sample.py end to end on tiny random models saved as run folders, plus the overfit model for image quality."""

import csv
import dataclasses
import importlib.util
import json
import shlex

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, EDMEulerScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image

import sample as script
from conftest import OVERFIT_SIZE, TINY_UNET_SIZE, psnr, red_circle, run_script, tiny_2d_unet, tiny_unet
from difftrain import config, inference_config
from difftrain.data import to_uint8
from difftrain.errors import UserError
from difftrain.pipelines import generate, unet_predictor
from difftrain.loading import load_model
from difftrain.schedulers import SCHEDULERS, default_scheduler, scheduler_from_training_config

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
SIZE = TINY_UNET_SIZE


def save_run(folder, prediction_type="epsilon", seed=0):
    """A fake run folder, as train_unconditional.py writes it, with a checkpoint-3/ holding unet/ and unet_ema/."""
    unet = tiny_2d_unet(seed)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type)).save_pretrained(folder)
    ckpt = folder / "checkpoint-3"
    unet.save_pretrained(ckpt / "unet")
    ema_weights = tiny_2d_unet(seed + 1)  # different weights, so a test can tell which were loaded
    EMAModel(ema_weights.parameters(), model_cls=UNet2DModel, model_config=ema_weights.config).save_pretrained(
        str(ckpt / "unet_ema"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("tiny") / "run")


def sample(*argv) -> int:
    return run_script(script, argv)


def read_pngs(folder, n):
    return np.stack([np.asarray(Image.open(folder / f"{k:05d}.png")) for k in range(n)])


def read_npz(folder):
    with np.load(folder / "samples.npz") as f:
        return f["images"], f["seeds"]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_writes_images_grid_and_metadata(run, tmp_path, name, capsys):
    out = tmp_path / "out"
    rc = sample("--model", run, "--scheduler", name, "--num_inference_steps", 3, "--num_images", 3,
                "--batch_size", 2, "--output_dir", out)
    if SCHEDULERS[name].requires and not HAS_TORCHSDE:
        assert rc == 2 and "pip install torchsde" in capsys.readouterr().err
        return
    assert rc == 0
    images = read_pngs(out, 3)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert Image.open(out / "grid.png").size == (2 * SIZE, 2 * SIZE)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 1, 2] and {r["scheduler"] for r in records} == {name}
    assert records[0]["scheduler_class"] == SCHEDULERS[name].cls.__name__
    assert json.loads((out / "scheduler_config.json").read_text())["_class_name"] == SCHEDULERS[name].cls.__name__


def test_pngs_are_the_samples_mapped_by_x_plus_1_times_127_5(run, tmp_path):
    """The written pixels are to_uint8(generate(...)), in [0, 255], and the npz holds the same pixels."""
    assert sample("--model", run, "--num_inference_steps", 4, "--num_images", 3, "--seed", 5,
                  "--output_dir", tmp_path / "png") == 0
    assert sample("--model", run, "--num_inference_steps", 4, "--num_images", 3, "--seed", 5,
                  "--output_dir", tmp_path / "npz", "--output_type", "npz") == 0
    pipe = DDPMPipeline.from_pretrained(run)
    default = default_scheduler(pipe.scheduler.config)  # what sample.py used, stochastic: seeds 5, 6, 7 fix it
    floats = generate(unet_predictor(pipe.unet), scheduler_from_training_config(default, pipe.scheduler.config),
                      (3, SIZE, SIZE), [5, 6, 7], 4, "cpu")
    assert floats.min() < 0.5 and floats.max() > -0.5  # not a constant image
    expected = to_uint8(floats).permute(0, 2, 3, 1).numpy()
    pngs = read_pngs(tmp_path / "png", 3)
    npz, seeds = read_npz(tmp_path / "npz")
    assert np.array_equal(pngs, expected)
    assert np.array_equal(npz, pngs) and seeds.tolist() == [5, 6, 7]


def test_batch_size_1_and_4_write_the_same_pngs(run, tmp_path):
    for batch_size in (1, 4):
        assert sample("--model", run, "--scheduler", "ddpm", "--num_inference_steps", 6, "--num_images", 4,
                      "--batch_size", batch_size, "--output_dir", tmp_path / str(batch_size)) == 0
    one, four = read_pngs(tmp_path / "1", 4), read_pngs(tmp_path / "4", 4)
    assert np.abs(one.astype(int) - four).max() <= 1 and (one == four).mean() > 0.99


def test_metadata_command_regenerates_one_image(run, tmp_path):
    out = tmp_path / "all"
    assert sample("--model", run, "--scheduler", "euler_a", "--num_inference_steps", 5, "--num_images", 4,
                  "--batch_size", 4, "--seed", 10, "--output_dir", out) == 0
    record = json.loads((out / "metadata.jsonl").read_text().splitlines()[2])
    assert record["file"] == "00002.png" and record["seed"] == 12 and record["model_path"] == str(run.resolve())
    assert {"diffusers", "torch", "difftrain"} <= set(record["versions"])
    args = shlex.split(record["command"])
    assert args[:2] == ["python", "sample.py"]
    assert sample(*args[2:], "--output_dir", tmp_path / "one") == 0
    again = np.asarray(Image.open(tmp_path / "one" / "00000.png"))
    assert np.abs(again.astype(int) - np.asarray(Image.open(out / "00002.png"))).max() <= 1


def test_overfit_model_reproduces_its_image(overfit_epsilon_model, tmp_path):
    """Each sampler on the model alone (the sampler's arithmetic; the deterministic ones sample unguided unless
    asked), and sample.py's defaults: euler_a 50, autoguided by the run's guide at its default scale."""
    target = red_circle(OVERFIT_SIZE)
    for name, steps, extra in (("euler_a", 50, ["--guidance_scale", 1]), ("ddim", 50, []), ("dpm++2m", 20, []),
                               ("unipc", 20, []), ("default", None, [])):
        out = tmp_path / name
        options = [] if steps is None else ["--scheduler", name, "--num_inference_steps", steps]
        assert sample("--model", overfit_epsilon_model, *options, *extra,
                      "--num_images", 4, "--output_type", "npz", "--output_dir", out) == 0
        images, _ = read_npz(out)
        scores = [psnr(img, target) for img in images]
        print(name, steps, "PSNR dB", [round(s, 1) for s in scores])
        assert min(scores) >= 25, (name, scores)


def test_v_prediction_model_gets_v_prediction_schedulers(tmp_path):
    folder = save_run(tmp_path / "v", prediction_type="v_prediction")
    model = load_model(str(folder))
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    for name in ("ddim", "dpm++2m", "euler_a", "unipc"):
        assert scheduler_from_training_config(name, model.scheduler_config).config.prediction_type == "v_prediction"
    assert sample("--model", folder, "--scheduler", "unipc", "--num_inference_steps", 2, "--num_images", 1) == 0
    record = json.loads((folder / "samples" / "unipc-2" / "metadata.jsonl").read_text())
    assert record["scheduler_options"]["prediction_type"] == "v_prediction"


def test_edm_model_samples_with_the_edm_table(tmp_path):
    folder = tmp_path / "edm"
    DDPMPipeline(unet=tiny_2d_unet(), scheduler=EDMEulerScheduler(sigma_max=40.0)).save_pretrained(folder)
    assert sample("--model", folder, "--num_inference_steps", 3, "--num_images", 2) == 0  # unset: EDM Euler
    out = folder / "samples" / "euler-3"
    assert json.loads((out / "metadata.jsonl").read_text().splitlines()[0])["scheduler_class"] == "EDMEulerScheduler"
    assert json.loads((out / "scheduler_config.json").read_text())["sigma_max"] == 40.0
    assert read_pngs(out, 2).shape == (2, SIZE, SIZE, 3)


def test_checkpoint_loads_ema_weights_or_raw_ones(run):
    ckpt = run / "checkpoint-3"
    ema, raw = load_model(str(ckpt)), load_model(str(ckpt), use_ema=False)
    expected_ema = UNet2DModel.from_pretrained(ckpt / "unet_ema").state_dict()
    expected_raw = UNet2DModel.from_pretrained(ckpt / "unet").state_dict()
    name = "conv_in.weight"
    assert ema.weights == "unet_ema" and torch.equal(ema.unet.state_dict()[name], expected_ema[name])
    assert raw.weights == "unet" and torch.equal(raw.unet.state_dict()[name], expected_raw[name])
    assert not torch.equal(expected_ema[name], expected_raw[name])
    assert ema.scheduler_config == load_model(str(run)).scheduler_config  # from the run folder
    for flags, folder in (((), "checkpoint-3"), (("--no_ema",), "checkpoint-3-no_ema")):
        assert sample("--model", ckpt, "--num_inference_steps", 3, "--num_images", 2, *flags) == 0
        assert (run / "samples" / folder / "euler_a-3" / "00001.png").is_file()  # the default sampler
    ema_png = read_pngs(run / "samples" / "checkpoint-3" / "euler_a-3", 2)
    raw_png = read_pngs(run / "samples" / "checkpoint-3-no_ema" / "euler_a-3", 2)
    assert not np.array_equal(ema_png, raw_png)


def test_a_checkpoint_samples_with_the_training_scheduler_it_holds(tmp_path):
    """A run stopped before its first pipeline save, or a checkpoint copied elsewhere: its own scheduler/ says how it
    was trained; without one, one line says what is missing (sampling never rebuilds it from training code)."""
    ckpt = tmp_path / "early" / "checkpoint-5"
    tiny_2d_unet().save_pretrained(ckpt / "unet")
    DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction").save_pretrained(ckpt / "scheduler")
    model = load_model(str(ckpt))
    assert model.weights == "unet"
    assert model.scheduler_config["num_train_timesteps"] == 100
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    (ckpt / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UserError, match="no scheduler/scheduler_config.json"):
        load_model(str(ckpt))


def test_scheduler_all_writes_a_labelled_sheet_and_timings(run, tmp_path):
    out = tmp_path / "sheet"
    assert sample("--model", run, "--scheduler", "all", "--num_inference_steps", 2, "--num_images", 2,
                  "--output_dir", out) == 0
    rows = list(csv.DictReader(open(out / "timings.csv")))
    assert [r["scheduler"] for r in rows] == list(SCHEDULERS)
    ok = {r["scheduler"]: r for r in rows if r["status"] == "ok"}
    assert set(ok) == {n for n, s in SCHEDULERS.items() if s.requires is None or HAS_TORCHSDE}
    assert all(float(r["seconds_per_image"]) > 0 for r in ok.values())
    assert ok["ddim"]["network_calls"] == "2"
    assert ok["heun"]["network_calls"] == "3"  # Heun: 2 calls a step, but 1 for the last
    sheet = np.asarray(Image.open(out / "comparison.png").convert("L"))
    row_h = sheet.shape[0] // len(SCHEDULERS)
    assert row_h >= 32 and sheet.shape[1] > 2 * 32
    for i in range(len(SCHEDULERS)):  # every row has its label (dark text on white at the left)
        assert sheet[i * row_h : (i + 1) * row_h, :40].min() < 128, i


def test_prompts_are_an_error_for_an_unconditional_model(run, tmp_path, capsys):
    for flags in (("--prompt", "a red circle"), ("--negative_prompt", "blue")):
        assert sample("--model", run, "--num_images", 1, "--output_dir", tmp_path, *flags) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unconditional model (UNet2DModel)" in err and flags[0] in err
    assert not any(tmp_path.iterdir())


def test_text_conditional_model_needs_prompts_and_its_text_encoder(tmp_path, capsys):
    folder = tmp_path / "text"
    unet = tiny_unet(0, UNet2DConditionModel, cross_attention_dim=8, attention_head_dim=2,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(folder / "unet")
    DDPMScheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "TextToImagePipeline"}))
    assert sample("--model", folder, "--num_images", 1) == 2
    assert "text-conditional model (UNet2DConditionModel); pass --prompt" in capsys.readouterr().err
    assert sample("--model", folder, "--num_images", 1, "--prompt", "a circle") == 2
    assert "without text_encoder/ and tokenizer/" in capsys.readouterr().err


def test_repeated_prompt_flags_are_all_kept():
    argv = ["--prompt", "a cat", "--model", "m", "--prompt=a dog", "--prompt", "x", "y"]
    assert config.parse(inference_config.SampleConfig, argv).prompt == ["a cat", "a dog", "x", "y"]


def test_bare_tristate_flags_mean_true():
    cfg = config.parse(inference_config.SampleConfig, ["--use_karras_sigmas", "--clip_sample", "false"])
    assert (cfg.use_karras_sigmas, cfg.clip_sample, cfg.thresholding) == (True, False, None)


def test_bf16_weights_sample(run, tmp_path):
    assert sample("--model", run, "--dtype", "bf16", "--num_inference_steps", 2, "--num_images", 2,
                  "--output_dir", tmp_path) == 0
    assert json.loads((tmp_path / "metadata.jsonl").read_text().splitlines()[0])["dtype"] == "bf16"
    assert read_pngs(tmp_path, 2).shape == (2, SIZE, SIZE, 3)


@pytest.mark.parametrize("flags, message", [
    (("--scheduler", "dpm2"), "unknown scheduler 'dpm2' for this model; choose one of: ddpm, ddim, pndm"),
    (("--num_inference_steps", 0), "--num_inference_steps must be at least 1"),
    (("--scheduler", "ddpm", "--num_inference_steps", 1001), "too many for ddpm on a model with 1000 training"),
    (("--batch_size", 0), "--batch_size must be at least 1"),
    (("--scheduler", "euler", "--eta", 0.5), "--eta applies to ddim only"),
    (("--output_dir", "{file}/sub"), "cannot write there"),
    (("--model", "{tmp}"), "neither a pipeline folder (no model_index.json) nor a checkpoint (no unet/)"),
    (("--model", "{tmp}/nothing-here"), "no such folder"),
    (("--model", "someone/some-model"), "not a local folder, and the Hub could not provide it"),
    (("--prompt_file", "{tmp}/missing.txt"), "--prompt_file"),
    (("--clip_sample", "true", "--scheduler", "euler"), "has no clip_sample"),
])
def test_bad_input_is_one_line(run, tmp_path, capsys, monkeypatch, flags, message):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    (tmp_path / "file").write_text("")
    flags = [str(f).format(file=tmp_path / "file", tmp=tmp_path) for f in flags]
    before = sorted(p.name for p in (run / "samples").glob("*")) if (run / "samples").exists() else []
    assert sample("--model", run, "--num_images", 1, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    after = sorted(p.name for p in (run / "samples").glob("*")) if (run / "samples").exists() else []
    assert after == before  # nothing written


def test_list_schedulers_needs_no_model(capsys):
    assert sample("--list_schedulers", "--model", "does-not-exist") == 0
    out = capsys.readouterr().out
    for name in SCHEDULERS:
        assert f"  {name} " in out


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        sample("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in config.fields_of(inference_config.SampleConfig):
        assert f"--{name}" in out, name


def test_sample_keeps_the_config_as_asked_and_records_what_it_resolved(run, tmp_path):
    from difftrain.sampling import sample as sample_command

    cfg = config.parse(inference_config.SampleConfig, ["--model", str(run), "--num_inference_steps", "2",
                                                       "--num_images", "1", "--output_dir", str(tmp_path / "out")])
    asked = dataclasses.asdict(cfg)
    sample_command(cfg)
    assert dataclasses.asdict(cfg) == asked and cfg.scheduler is None and cfg.guidance_scale is None
    record = json.loads((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()[0])
    assert record["scheduler"] == "euler_a"
