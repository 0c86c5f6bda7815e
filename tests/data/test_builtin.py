"""Built-in datasets (data/builtin.py): MNIST from the mnist package's file, Fashion-MNIST from Debian's
dataset-fashion-mnist, and the captions that name their classes."""

import gzip
import pickle

import numpy as np
import pytest

from difftrain.data import builtin
from difftrain.errors import UserError


def test_builtin_mnist_is_the_package_file():
    ds = builtin.load_builtin("mnist", "train")
    assert len(ds) == 50_000 and ds.features["label"].names == [str(d) for d in range(10)]
    spec_dir = __import__("importlib").util.find_spec("mnist").submodule_search_locations[0]
    with gzip.open(f"{spec_dir}/data/mnist.pkl.gz") as f:
        (x, y), _, _ = pickle.load(f, encoding="latin1")
    for i in (0, 12345, 49_999):
        row = ds[i]
        assert row["label"] == y[i]
        assert np.array_equal(np.asarray(row["image"]), (x[i].reshape(28, 28) * 256).astype(np.uint8))
    assert len(builtin.load_builtin("mnist", "test")) == 10_000


def test_builtin_unknown_split():
    with pytest.raises(UserError, match="splits train, validation, test"):
        builtin.load_builtin("mnist", "dev")


@pytest.mark.skipif(not builtin.FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_builtin_fashion_mnist():
    ds = builtin.load_builtin("fashion_mnist", "test")
    assert len(ds) == 10_000 and ds.features["label"].names[7] == "sneaker"
    assert np.asarray(ds[0]["image"]).shape == (28, 28)


def test_fashion_mnist_missing_gives_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        builtin.load_builtin("fashion_mnist", "train", cache_dir=str(tmp_path))


def test_builtin_captions_name_the_class():
    digits = builtin.class_captions("mnist", [str(d) for d in range(10)])
    assert "a handwritten digit seven" in digits[7] and "the number 7" in digits[7] and len(digits[7]) >= 4
    fashion = builtin.class_captions("fashion_mnist", ["sneaker", "ankle boot"])
    assert "a photo of a sneaker" in fashion[0] and "a photo of an ankle boot" in fashion[1]
