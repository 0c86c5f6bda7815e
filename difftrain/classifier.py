"""A small CNN that reads 28×28 grayscale digits (or any 10-class 28×28 dataset), for prompt accuracy: train it,
save it (model.safetensors + config.json), load it, predict, and score images against the class they should show."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError

IMAGE_SIZE = 28
ARCHITECTURE = "difftrain.classifier.SmallCNN/1"


class SmallCNN(nn.Module):
    """Two 5×5 conv blocks and two linear layers (~0.1M parameters): 99 % on MNIST test in a few CPU epochs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Classifier:
    network: SmallCNN
    config: dict  # labels, dataset, test accuracy, ...

    @property
    def labels(self) -> list[str]:
        return self.config["labels"]


def to_input(images_u8) -> torch.Tensor:
    """uint8 NCHW, any size, 1 or 3 channels → float N×1×28×28 in [-1, 1] (channels averaged, bilinear resize
    with antialiasing, so 32 px samples read like the 28 px digits the network learned)."""
    x = torch.as_tensor(np.asarray(images_u8)).float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


@torch.no_grad()
def predict_proba(classifier: Classifier, images_u8, batch_size: int = 512) -> np.ndarray:
    """N×classes softmax probabilities (how sure the network is that each image shows each class)."""
    network = classifier.network.eval()
    device = next(network.parameters()).device
    images = np.asarray(images_u8)
    out = [network(to_input(images[k : k + batch_size]).to(device)).softmax(dim=1).cpu().numpy()
           for k in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(classifier.labels)), np.float32)


def predict(classifier: Classifier, images_u8, batch_size: int = 512) -> np.ndarray:
    """The class index each image is read as."""
    return predict_proba(classifier, images_u8, batch_size).argmax(axis=1)


def class_accuracy(predicted: np.ndarray, expected: np.ndarray, labels: list[str]) -> dict:
    """{"overall": fraction right, "per_class": {label: fraction right (None when no image should show it)}}."""
    predicted, expected = np.asarray(predicted), np.asarray(expected)
    right = predicted == expected
    per_class = {label: (float(right[expected == k].mean()) if (expected == k).any() else None)
                 for k, label in enumerate(labels)}
    return {"overall": float(right.mean()) if len(right) else None, "per_class": per_class, "images": len(right)}


def prompt_accuracy(classifier: Classifier, images_u8, expected) -> dict:
    """Images made from prompts for class `expected[i]`: the fraction the classifier reads as that class."""
    return class_accuracy(predict(classifier, images_u8), expected, classifier.labels)


# ----------------------------------------------------------------------------------------------
# Data, training, files


def labelled_images(dataset_name: str, split: str, *, cache_dir=None, label_column: str = "label",
                    image_column=None, num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 N×1×28×28 images, int64 labels and the label names of a dataset split (decoded once, cached)."""
    import datasets

    from .data.images import prepare_images
    from .data.sources import find_image_column, load_source

    ds = load_source(dataset_name, None, split=split, cache_dir=cache_dir)
    if label_column not in ds.column_names:
        raise UserError(f"--label_column '{label_column}' not in the dataset; its columns are: "
                        f"{', '.join(ds.column_names)}.")
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    feature = ds.features[label_column]
    labels = list(feature.names) if isinstance(feature, datasets.ClassLabel) else \
        [str(v) for v in sorted(set(ds[label_column]))]
    column = find_image_column(ds, image_column)
    prepared = prepare_images(ds, column, IMAGE_SIZE, center_crop=True, image_mode="L")  # keeps the order
    return np.stack(prepared[:]["pixels"]), np.asarray(ds[label_column], np.int64), labels


def accuracy(network: nn.Module, images_u8: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(Classifier(network, {"labels": []}), images_u8) == labels).mean())


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, num_classes: int, *, epochs: int = 3,
                     batch_size: int = 128, learning_rate: float = 2e-3, seed: int = 0, device="cpu",
                     shift: int = 2) -> SmallCNN:
    """AdamW with a one-cycle LR; random shifts of up to `shift` pixels (digits are not always centred in
    generated images)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = SmallCNN(num_classes).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = -(-len(train_images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    images, labels = torch.from_numpy(train_images), torch.from_numpy(train_labels)
    network.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
        for step in bar:
            index = order[step * batch_size : (step + 1) * batch_size]
            x = to_input(images[index]).to(device)
            if shift:
                dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(network(x), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return network.eval()


def save_classifier(classifier: Classifier, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.network.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(classifier.config, indent=2) + "\n")
    return folder


def load_classifier(path: str | Path, device="cpu") -> Classifier:
    """A folder written by save_classifier (`evaluate.py train-classifier`)."""
    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"--classifier {path}: not a classifier folder (config.json + model.safetensors); make one "
                        "with: python evaluate.py train-classifier --dataset mnist --output_dir PATH")
    config = json.loads((folder / "config.json").read_text())
    if config.get("architecture") != ARCHITECTURE:
        raise UserError(f"--classifier {path}: architecture {config.get('architecture')!r}, this version reads "
                        f"{ARCHITECTURE!r}; train a new one with evaluate.py train-classifier.")
    network = SmallCNN(len(config["labels"]))
    network.load_state_dict(load_file(str(folder / "model.safetensors")))
    return Classifier(network.to(device).eval(), config)


def train_and_save(dataset_name: str, output_dir: str | Path, *, epochs: int = 3, batch_size: int = 128,
                   learning_rate: float = 2e-3, seed: int = 0, cache_dir=None, label_column="label",
                   image_column=None, train_split="train", test_split="test", max_train_samples=None,
                   device="cpu") -> Classifier:
    """train-classifier: train on one split, measure on another, save with the accuracy in config.json."""
    train_x, train_y, labels = labelled_images(dataset_name, train_split, cache_dir=cache_dir, label_column=label_column,
                                               image_column=image_column, num_samples=max_train_samples)
    test_x, test_y, _ = labelled_images(dataset_name, test_split, cache_dir=cache_dir, label_column=label_column,
                                        image_column=image_column)
    start = time.perf_counter()
    network = train_classifier(train_x, train_y, len(labels), epochs=epochs, batch_size=batch_size,
                               learning_rate=learning_rate, seed=seed, device=device)
    test_accuracy = accuracy(network, test_x, test_y)
    config = {"architecture": ARCHITECTURE, "labels": labels, "image_size": IMAGE_SIZE, "channels": 1,
              "dataset": dataset_name, "train_split": train_split, "train_images": len(train_x), "epochs": epochs,
              "seed": seed, "test_split": test_split, "test_accuracy": round(test_accuracy, 5),
              "train_seconds": round(time.perf_counter() - start, 1)}
    classifier = Classifier(network.cpu(), config)
    save_classifier(classifier, output_dir)
    return classifier


def train_classifier_command(cfg) -> Path:
    """`evaluate.py train-classifier`: train, report the test accuracy, save to --output_dir."""
    from .utils import prepare_output_dir, resolve_device

    device = resolve_device("auto")
    out = prepare_output_dir(Path(cfg.output_dir))
    if (out / "model.safetensors").exists():
        raise UserError(f"--output_dir {out} already holds a classifier; pass another folder or delete it.")
    classifier = train_and_save(cfg.dataset_name, out, epochs=cfg.num_epochs, batch_size=cfg.train_batch_size,
                                learning_rate=cfg.learning_rate, seed=cfg.seed, cache_dir=cfg.cache_dir,
                                label_column=cfg.label_column, image_column=cfg.image_column,
                                train_split=cfg.train_split,
                                test_split=cfg.test_split, max_train_samples=cfg.max_train_samples, device=device)
    accuracy = classifier.config["test_accuracy"]
    print(f"test accuracy {accuracy:.4f} on {cfg.dataset_name}/{cfg.test_split} → {out}")
    if cfg.dataset_name == "mnist" and accuracy < 0.99:
        print("note: below the 99% bar for MNIST; train longer (--num_epochs).")
    return out
