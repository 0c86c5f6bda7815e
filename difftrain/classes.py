"""Class labels for class-conditional models: the label column read once with its class names, label dropout for
classifier-free guidance, and the names a user asks for turned into ids. A model of K classes has K + 1 class
embeddings: id K is "no class", what guidance compares against."""

from __future__ import annotations

import torch

from .errors import UserError

CLASS_GUIDANCE = 2.0  # what a class-conditional model's grids, its pipeline and sample.py use unless told (README Quality)


def read_labels(ds, label_column: str) -> tuple[list[int], list[str]]:
    """(an id in [0, K) per row, the K class names): a ClassLabel column keeps its ids and names; integer or string
    values become ids in sorted order, named by their values."""
    import datasets

    if label_column not in ds.column_names:
        raise UserError(f"--label_column '{label_column}' not in the dataset; its columns are: "
                        f"{', '.join(ds.column_names)}. Pass --label_column NAME, or drop --class_conditional.")
    feature = ds.features[label_column]
    values = ds[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return [int(v) for v in values], list(feature.names)
    if not isinstance(feature, datasets.Value) or not (feature.dtype.startswith(("int", "uint")) or
                                                        feature.dtype in ("string", "large_string")):
        raise UserError(f"--label_column '{label_column}' holds {feature}; class labels must be a ClassLabel, "
                        "integers or strings.")
    if any(v is None for v in values):
        raise UserError(f"--label_column '{label_column}' has rows without a label; fill or drop them.")
    names = sorted(set(values))
    index = {v: k for k, v in enumerate(names)}
    return [index[v] for v in values], [str(n) for n in names]


def drop_labels(labels: torch.Tensor, dropout: float, null_id: int) -> torch.Tensor:
    """Each label replaced by "no class" with probability `dropout`, from the global (checkpointed) torch RNG, so the
    model also learns the unconditional prediction that guidance needs."""
    drop = torch.rand(labels.shape, device=labels.device) < dropout
    return torch.where(drop, torch.full_like(labels, null_id), labels)


def label_ids(requested: list[str], names: list[str], flag: str = "--class_label") -> list[int]:
    """Class names (or their ids as numbers) → ids; "" is "no class". `all` is every class in order."""
    if requested == ["all"]:
        return list(range(len(names)))
    ids = []
    for value in requested:
        if value == "":
            ids.append(len(names))
        elif value in names:
            ids.append(names.index(value))
        elif value.isdigit() and int(value) < len(names):
            ids.append(int(value))
        else:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise UserError(f"{flag} {value}: not a class of this model; its classes are: {shown} (or all).")
    return ids


class LabelledImages(torch.utils.data.Dataset):
    """Decoded images (items {"pixels": uint8 CHW}) with their class ids: items {"pixels", "label"}."""

    def __init__(self, images, labels: list[int]):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**self.images[i], "label": self.labels[i]}
