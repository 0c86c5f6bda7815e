"""The MNIST classifier behind prompt accuracy. Trained here on a SUBSET with a LOWER BAR (3000 training images,
2 epochs, ≥ 90 % on the first 1000 test images: seconds on a CPU); the full recipe (`evaluate.py train-classifier`,
50k images) reaching 99 % is measured in benchmarks/results/evaluation.md, not in CI."""

import json

import numpy as np
import pytest

from difftrain import classifier as clf
from difftrain.errors import UserError


@pytest.fixture(scope="module")
def trained():
    x, y, labels = clf.labelled_images("mnist", "train", num_samples=3000)
    network = clf.train_classifier(x, y, len(labels), epochs=2, batch_size=32, learning_rate=3e-3)
    return clf.Classifier(network, {"architecture": clf.ARCHITECTURE, "labels": labels})


@pytest.fixture(scope="module")
def test_set():
    images, labels, _ = clf.labelled_images("mnist", "test", num_samples=1000)
    return images, labels


def test_reaches_its_bar_on_mnist_test(trained, test_set):
    images, labels = test_set
    assert clf.accuracy(trained.network, images, labels) >= 0.90


def test_save_load_gives_the_same_predictions(trained, test_set, tmp_path):
    clf.save_classifier(trained, tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "c" / "config.json").read_text())["labels"] == [str(d) for d in range(10)]
    loaded = clf.load_classifier(tmp_path / "c")
    images = test_set[0][:64]
    assert np.array_equal(clf.predict(loaded, images), clf.predict(trained, images))


def test_reads_3_channel_32px_images_like_the_28px_digits(trained, test_set):
    """Generated samples are 32 px (and maybe RGB): resized and averaged, they read as the digits they show."""
    from PIL import Image

    images, labels = test_set[0][:200], test_set[1][:200]
    big = np.stack([np.asarray(Image.fromarray(im[0]).resize((32, 32), Image.BILINEAR)) for im in images])
    rgb = np.repeat(big[:, None], 3, axis=1)
    assert (clf.predict(trained, rgb) == labels).mean() >= 0.85


def test_prompt_accuracy_per_class_and_overall(trained, test_set):
    images, labels = test_set
    right = clf.prompt_accuracy(trained, images, labels)
    wrong = clf.prompt_accuracy(trained, images, (labels + 1) % 10)  # images "made from" the wrong prompt
    assert right["overall"] >= 0.9 > 0.2 > wrong["overall"] and right["images"] == len(labels)
    assert set(right["per_class"]) == set(trained.labels)
    assert all(v >= 0.5 for v in right["per_class"].values())


def test_class_accuracy_by_formula():
    result = clf.class_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c", "d"])
    assert result["overall"] == 0.75
    assert result["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.5, "d": None}


def test_loading_something_else_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="train-classifier"):
        clf.load_classifier(tmp_path)
    (tmp_path / "config.json").write_text('{"architecture": "other"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="architecture 'other'"):
        clf.load_classifier(tmp_path)


def test_missing_label_column_names_the_columns():
    with pytest.raises(UserError, match="--label_column 'digit'.*image, label"):
        clf.labelled_images("mnist", "test", label_column="digit", num_samples=10)
