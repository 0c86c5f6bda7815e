"""train_unconditional.py --class_conditional: class labels from the dataset, label dropout for guidance, the
ClassConditionalPipeline it writes, and sample.py --class_label."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import OVERFIT_SIZE, OVERFIT_UNET, ROOT, blue_square, psnr, red_circle, run_script
from difftrain.classes import drop_labels, label_ids, read_labels
from difftrain.errors import UserError

TINY = ["--config", ROOT / "configs/tiny.yaml"]


def test_labels_keep_a_classlabel_and_number_other_values():
    import datasets

    named = datasets.Dataset.from_dict({"y": [2, 0, 1]}, features=datasets.Features(
        y=datasets.ClassLabel(names=["cat", "dog", "eel"])))
    assert read_labels(named, "y") == ([2, 0, 1], ["cat", "dog", "eel"])
    assert read_labels(datasets.Dataset.from_dict({"y": ["b", "a", "b"]}), "y") == ([1, 0, 1], ["a", "b"])
    assert read_labels(datasets.Dataset.from_dict({"y": [7, 3, 7]}), "y") == ([1, 0, 1], ["3", "7"])
    with pytest.raises(UserError, match="--label_column 'label' not in the dataset; its columns are: y"):
        read_labels(named, "label")
    with pytest.raises(UserError, match="must be a ClassLabel, integers or strings"):
        read_labels(datasets.Dataset.from_dict({"y": [0.5, 1.5]}), "y")


def test_label_dropout_and_names():
    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(10_000, dtype=torch.long), 0.1, null_id=10)
    assert set(dropped.tolist()) == {0, 10} and 0.08 < (dropped == 10).float().mean() < 0.12
    assert torch.equal(drop_labels(torch.arange(5), 0.0, 5), torch.arange(5))
    names = ["zero", "one", "two"]
    assert label_ids(["all"], names) == [0, 1, 2] and label_ids(["two", "0", ""], names) == [2, 0, 3]
    with pytest.raises(UserError, match="--class_label seven: not a class of this model; its classes are: zero, one"):
        label_ids(["seven"], names)


@pytest.fixture(scope="module")
def tiny_class_run(tmp_path_factory, datasets_cache) -> Path:
    import train_unconditional

    out = tmp_path_factory.mktemp("class") / "run"
    assert run_script(train_unconditional, [*TINY, "--output_dir", out, "--class_conditional"]) == 0
    return out


def test_a_class_run_writes_a_pipeline_that_knows_its_classes(tiny_class_run):
    from difftrain.pipelines import ClassConditionalPipeline

    index = json.loads((tiny_class_run / "model_index.json").read_text())
    assert index["_class_name"] == "ClassConditionalPipeline" and index["class_names"] == [str(d) for d in range(10)]
    unet_config = json.loads((tiny_class_run / "unet" / "config.json").read_text())
    assert unet_config["num_class_embeds"] == 11  # ten digits and "no class"
    pipe = ClassConditionalPipeline.from_pretrained(tiny_class_run)
    three = pipe(class_labels=["3", "3"], guidance_scale=1.0, num_inference_steps=5, output_type="np").images
    five = pipe(class_labels=[5, 5], guidance_scale=1.0, num_inference_steps=5, output_type="np").images
    guided = pipe(class_labels=["3", "3"], guidance_scale=4.0, num_inference_steps=5, output_type="np").images
    assert three.shape == (2, 16, 16, 1)
    assert np.abs(three - five).mean() > 1e-3  # the label changes the images (same seeds)
    assert np.abs(three - guided).mean() > 1e-3  # and so does the guidance
    grid = (tiny_class_run / "samples").glob("*.png")
    assert any(grid)


def test_sample_py_takes_class_labels(tiny_class_run, tmp_path, capsys):
    import sample

    out = tmp_path / "samples"
    assert run_script(sample, ["--model", tiny_class_run, "--class_label", "all", "--num_images", 10,
                               "--num_inference_steps", 5, "--output_dir", out]) == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["class_label"] for r in records] == [str(d) for d in range(10)]
    assert "--class_label 7" in records[7]["command"]
    assert run_script(sample, ["--model", tiny_class_run, "--class_label", "seven", "--output_dir", tmp_path / "x"]) == 2
    assert "not a class of this model" in capsys.readouterr().err
    assert run_script(sample, ["--model", tiny_class_run, "--prompt", "a 7", "--output_dir", tmp_path / "y"]) == 2
    assert "class-conditional model" in capsys.readouterr().err


def test_quality_reports_class_accuracy_for_a_class_model(tiny_class_run, tmp_path):
    from benchmarks import quality
    from difftrain import classifier as clf

    x, y, labels = clf.labelled_images("mnist", "train", num_samples=300)
    classifier = clf.save_classifier(clf.Classifier(clf.train_classifier(x, y, len(labels), epochs=1, batch_size=32),
                                                    {"architecture": clf.ARCHITECTURE, "labels": labels}),
                                     tmp_path / "classifier")
    record = quality.main(["--model", str(tiny_class_run), "--num_samples", "20", "--num_inference_steps", "3",
                           "--classifier", str(classifier), "--results_dir", str(tmp_path / "results"), "--no_fid"])
    assert record["guidance_scale"] == 2.0  # the run's own (its unset --validation_guidance_scale, resolved)
    assert 0 <= record["prompt_accuracy"] <= 1 and len(record["prompt_accuracy_per_digit"]) == 10


def test_class_flags_without_class_conditional_are_refused(tmp_path, capsys):
    import train_unconditional

    # --validation_guidance_scale is also the autoguidance scale: refused only where there is no guide either
    for flags in (["--label_dropout", "0.2"], ["--label_column", "y"],
                  ["--validation_guidance_scale", "2", "--autoguidance_snapshot", "0"]):
        assert run_script(train_unconditional, [*TINY, "--output_dir", tmp_path / "run", *flags]) == 2
        assert "--class_conditional" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_class_run_is_not_continued_as_an_unconditional_one(tiny_class_run, tmp_path, capsys):
    import shutil

    import train_unconditional

    run = shutil.copytree(tiny_class_run, tmp_path / "run")
    assert run_script(train_unconditional, [*TINY, "--output_dir", run, "--resume_from_checkpoint", "latest",
                                            "--max_train_steps", 25]) == 2
    err = capsys.readouterr().err
    assert "num_class_embeds=11" in err and "--class_conditional" in err
    assert run_script(train_unconditional, [*TINY, "--output_dir", tmp_path / "other", "--max_train_steps", 2,
                                            "--pretrained_model_name_or_path", tiny_class_run]) == 2
    assert "11 class embeddings, this run needs none" in capsys.readouterr().err


def test_two_class_overfit_draws_each_image_for_its_label(tmp_path, datasets_cache):
    """Two images, two labels: each label reproduces its own image and not the other's."""
    import datasets
    from PIL import Image

    import train_unconditional
    from difftrain.pipelines import ClassConditionalPipeline

    images = {"circle": red_circle(OVERFIT_SIZE), "square": blue_square(OVERFIT_SIZE)}
    data = tmp_path / "data"
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=list(images)))
    datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images.values()] * 32, "label": [0, 1] * 32},
                               features=features).save_to_disk(str(data))
    out = tmp_path / "run"
    assert run_script(train_unconditional, [
        "--dataset_name", data, "--output_dir", out, "--resolution", OVERFIT_SIZE, "--unet", OVERFIT_UNET,
        "--class_conditional", "--train_batch_size", 64, "--max_train_steps", 250, "--learning_rate", 2e-3,
        "--lr_scheduler", "constant", "--lr_warmup_steps", 0, "--checkpointing_steps", 10_000, "--validation_steps",
        10_000, "--report_to", "none", "--seed", 0, "--mixed_precision", "no"]) == 0
    pipe = ClassConditionalPipeline.from_pretrained(out)
    for name, image in images.items():
        other = images["square" if name == "circle" else "circle"]
        samples = pipe(class_labels=[name] * 4, guidance_scale=1.0, output_type="np").images
        samples = (samples * 255).round().astype(np.uint8)
        own, wrong = [psnr(s, image) for s in samples], [psnr(s, other) for s in samples]
        print(name, "PSNR dB own", [round(s, 1) for s in own], "other", [round(s, 1) for s in wrong])
        assert min(own) >= 22 and max(wrong) < 15, (own, wrong)
