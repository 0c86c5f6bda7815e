"""Training data: resolve the source, decode and resize once (cached), sample in a resumable order."""

from __future__ import annotations

import torch

from .images import augment, collate, prepare_images, to_model_range, to_uint8
from .sources import find_image_column, load_source

__all__ = ["EpochSampler", "augment", "collate", "decode_images", "load_source_dataset", "load_training_images",
           "to_model_range", "to_uint8"]


def load_source_dataset(cfg):
    """The config's raw training set (--max_train_samples applied), before any decoding."""
    ds = load_source(cfg.dataset_name, cfg.train_data_dir, config_name=cfg.dataset_config_name,
                     split=cfg.split, cache_dir=cfg.cache_dir)
    if cfg.max_train_samples is not None:
        ds = ds.select(range(min(cfg.max_train_samples, len(ds))))
    return ds


def decode_images(cfg, ds, image_mode: str | None = None):
    """ds's images decoded once (cached) as items {"pixels": uint8 CHW}, row for row, in image_mode (default:
    --image_mode)."""
    return prepare_images(ds, find_image_column(ds, cfg.image_column), cfg.resolution, center_crop=cfg.center_crop,
                          image_mode=image_mode or cfg.image_mode, interpolation=cfg.image_interpolation_mode,
                          bits=16 if cfg.preserve_input_precision else 8)


def load_training_images(cfg):
    """The config's training set as items {"pixels": uint8 CHW}."""
    return decode_images(cfg, load_source_dataset(cfg))


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order that is a pure function of (seed, epoch): a resumed run rebuilds the same
    order and skips the consumed batches without loading them."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length
