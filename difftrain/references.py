"""The reference side of FID and KID: a dataset split's images at a resolution (decoded as training sees them), and
their Inception statistics, computed once and cached per (dataset, split, resolution, count) beside the 🤗 datasets
cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .metrics import STATS_VERSION, Stats, generated_stats
from .utils import cache_root


def stats_cache_dir(cache_dir: str | None = None) -> Path:
    """Beside the 🤗 datasets cache (or under --cache_dir)."""
    return cache_root(cache_dir, "difftrain-fid-stats")


def reference_key(dataset_name: str, split: str, resolution: int, *, dataset_config_name=None, image_column=None,
                  num_samples=None) -> str:
    """A readable, unique file name for one reference set."""
    from .data.builtin import BUILTINS

    source = dataset_name if dataset_name in BUILTINS or not Path(dataset_name).exists() \
        else str(Path(dataset_name).resolve())
    ident = json.dumps([source, dataset_config_name, split, resolution, image_column, num_samples, STATS_VERSION])
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(source).name)[:40]
    count = f"first{num_samples}" if num_samples else "all"
    return f"{slug}-{split}-{resolution}px-{count}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}.npz"


def reference_images(dataset_name: str, split: str, resolution: int, *, cache_dir=None, dataset_config_name=None,
                     image_column=None, num_samples=None):
    """The dataset's images at `resolution` (shorter side, bilinear, centre crop: how training sees them), as a
    dataset of uint8 CHW `pixels`, decoded once and cached by 🤗 datasets."""
    from .data.images import prepare_images
    from .data.sources import find_image_column, load_source

    ds = load_source(dataset_name, None, config_name=dataset_config_name, split=split, cache_dir=cache_dir)
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    column = find_image_column(ds, image_column)
    return prepare_images(ds, column, resolution, center_crop=True, image_mode="auto")


def reference_stats_path(dataset_name: str, split: str, resolution: int, *, cache_dir=None, ref_stats=None,
                         dataset_config_name=None, image_column=None, num_samples=None) -> Path:
    """Where reference_stats reads (or writes) this set's statistics: `ref_stats`, or the cache."""
    if ref_stats:
        return Path(ref_stats)
    return stats_cache_dir(cache_dir) / reference_key(dataset_name, split, resolution,
                                                      dataset_config_name=dataset_config_name,
                                                      image_column=image_column, num_samples=num_samples)


def reference_stats(dataset_name: str, split: str = "test", resolution: int = 32, *, cache_dir=None,
                    ref_stats: str | Path | None = None, dataset_config_name=None, image_column=None,
                    num_samples: int | None = None, device=None, batch_size: int = 32) -> Stats:
    """Stats of a dataset split at a resolution: read from `ref_stats` or the cache when there, else computed (all
    images, or the first num_samples) and written there."""
    path = reference_stats_path(dataset_name, split, resolution, cache_dir=cache_dir, ref_stats=ref_stats,
                                dataset_config_name=dataset_config_name, image_column=image_column,
                                num_samples=num_samples)
    if path.is_file():
        return Stats.load(path)
    images = reference_images(dataset_name, split, resolution, cache_dir=cache_dir,
                              dataset_config_name=dataset_config_name, image_column=image_column,
                              num_samples=num_samples)

    def batches():
        for k in range(0, len(images), 256):
            yield np.stack(images[k : k + 256]["pixels"])

    meta = {"dataset": dataset_name, "config": dataset_config_name, "split": split, "resolution": resolution,
            "image_column": image_column}
    stats = generated_stats(batches(), device=device, batch_size=batch_size, total=len(images),
                            desc=f"reference {Path(dataset_name).name}/{split}", meta=meta)
    try:
        stats.save(path)
    except OSError as e:
        raise UserError(f"cannot write reference statistics to {path} ({e.strerror or e}); pass --ref_stats PATH "
                        "in a writable folder.") from None
    return stats
