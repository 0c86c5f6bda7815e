"""--eval_steps: FID/KID (and prompt accuracy) of the shipping weights logged to the tracker during training."""

import math

import datasets
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from difftrain.text_config import DIGIT_PROMPTS


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """48 train / 24 test MNIST images with captions, as a save_to_disk DatasetDict: a cheap reference split."""
    from difftrain.data.builtin import load_builtin

    train = load_builtin("mnist", "train")
    folder = tmp_path_factory.mktemp("small-mnist") / "data"
    datasets.DatasetDict({"train": train.select(range(48)), "test": train.select(range(100, 124))}
                         ).save_to_disk(str(folder))
    return folder


def scalars(out, tag):
    events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_unconditional_run_logs_fid_and_kid(small_mnist, tmp_path, train_unconditional):
    out = tmp_path / "run"
    assert train_unconditional("--config", ROOT / "configs/tiny.yaml", "--dataset_name", small_mnist,
                               "--output_dir", out, "--max_train_steps", 6, "--eval_steps", 3, "--eval_num_samples", 6,
                               "--validation_inference_steps", 3, "--report_to", "tensorboard") == 0
    fid, kid = scalars(out, "eval/fid"), scalars(out, "eval/kid")
    assert [s for s, _ in fid] == [3, 6] and [s for s, _ in kid] == [3, 6]
    assert all(math.isfinite(v) and v > 0 for _, v in fid)  # 6 noisy samples are far from MNIST


def test_text_run_logs_prompt_accuracy(small_mnist, tmp_path, train_text_to_image):
    import torch

    from difftrain.classifier import ARCHITECTURE, Classifier, SmallCNN, save_classifier
    from test_train_text_to_image import TINY_TEXT_UNET

    # a classifier that reads every image as a 3, so the logged accuracy is known: images k = 0..14 are asked for
    # digit k mod 10 (the ten digit prompts, in label order), and only k = 3 and 13 ask for a 3
    classifier = tmp_path / "classifier"
    network = SmallCNN(10)
    with torch.no_grad():
        network.head[-1].weight.zero_()
        network.head[-1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())
    save_classifier(Classifier(network, {"architecture": ARCHITECTURE, "labels": [str(d) for d in range(10)],
                                         "num_classes": 10}), classifier)
    out = tmp_path / "run"
    assert train_text_to_image("--config", ROOT / "configs/tiny.yaml", "--dataset_name", small_mnist,
                               "--unet", TINY_TEXT_UNET, "--output_dir", out, "--max_train_steps", 4,
                               "--eval_steps", 4, "--eval_num_samples", 15, "--validation_inference_steps", 3,
                               "--eval_classifier", classifier, "--report_to", "tensorboard",
                               "--validation_prompts", *DIGIT_PROMPTS) == 0
    (step, accuracy), = scalars(out, "eval/prompt_accuracy")
    assert step == 4 and accuracy == pytest.approx(2 / 15)
    assert math.isfinite(scalars(out, "eval/fid")[0][1])
