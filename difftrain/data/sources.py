"""Where training data comes from: a built-in name, a `save_to_disk` folder, an image folder, or a Hub id."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .builtin import BUILTINS, load_builtin
from ..utils import first_line

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
OFFLINE_HINT = (
    "built-in datasets work offline: --dataset_name mnist or fashion_mnist; "
    "or pass a save_to_disk folder, or --train_data_dir FOLDER"
)



def _pick_split(ds, split: str, where: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{where} has splits {', '.join(ds)}; choose one with --split.")
        return ds[split]
    if split != "train":  # a dataset without splits is one 'train' split: never pretend it is another
        raise UserError(f"{where} has no splits (its rows count as 'train'), so --split {split} cannot be honoured; "
                        "pass --split train to use its rows, or a DatasetDict with that split.")
    return ds


def _load_image_folder(folder: str, cache_dir: str | None):
    import datasets

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--train_data_dir {folder}: no such folder.")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*") if p.is_file()):
        raise UserError(f"--train_data_dir {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)
    except Exception as e:  # a malformed metadata.jsonl/csv, mixed columns ...
        raise UserError(f"--train_data_dir {folder}: datasets cannot read it as an image folder ({first_line(e)}); "
                        "check its metadata.jsonl (one JSON object a line, with file_name) or remove it.") from None
    return _pick_split(ds, "train", f"--train_data_dir {folder}")


def load_source(dataset_name: str | None, train_data_dir: str | None, *, config_name=None, split="train",
                cache_dir=None):
    """The raw dataset, before any decoding or resizing."""
    import datasets

    if train_data_dir:
        return _load_image_folder(train_data_dir, cache_dir)
    if dataset_name in BUILTINS:
        return load_builtin(dataset_name, split, cache_dir)
    path = Path(dataset_name)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        try:
            saved = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets cannot reopen a saved dataset of 0 rows (no shards), nor a damaged one
            raise UserError(f"--dataset_name {dataset_name}: datasets cannot open this saved dataset ({first_line(e)}); "
                            "it is empty or damaged: save it again with save_to_disk, with at least one row.") from None
        return _pick_split(saved, split, f"--dataset_name {dataset_name}")
    try:
        ds = datasets.load_dataset(dataset_name, config_name, cache_dir=cache_dir)
    except Exception as e:  # offline, unknown id, missing config: all end in the same one-line advice
        raise UserError(
            f"could not load dataset '{dataset_name}' ({first_line(e)}); {OFFLINE_HINT}."
        ) from None
    return _pick_split(ds, split, f"dataset '{dataset_name}'")


def find_image_column(ds, image_column: str | None) -> str:
    """The named image column, or the first column typed as an image; a missing one lists the columns."""
    import datasets

    columns = list(ds.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise UserError(f"--image_column '{image_column}' not in the dataset; its columns are: {', '.join(columns)}.")
        return image_column
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img", "pixel_values"):
        if name in columns:
            return name
    raise UserError(f"no image column found; pass --image_column, one of: {', '.join(columns)}.")
