"""Pixel clusters: how the unconditional default learns which digit to draw without labels. Before training, k-means
groups the training images by their blurred pixels; the UNet is trained on the cluster ids as classes (with label
dropout, for classifier-free guidance), and sampling draws a cluster in proportion to its size, then the image
guided by it. This is self-guidance (Hu et al. 2023, "Self-Guided Diffusion Models", with self-supervised features
where we use pixels): no labels are read, yet each sample commits to one kind of image early, as a class model does.
On MNIST, 100 clusters of 14×14 pixels are 86 % pure by digit (README Quality)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLUSTERS = 100  # from scratch in pixel space unless told (--num_clusters); README Quality
MIN_CLUSTERED_IMAGES = 1000  # unless told, fewer training images than this are not clustered (autoguided instead)
CLUSTER_SIDE = 14  # images are averaged down to this many pixels a side: k-means then groups shapes, not stray pixels
FIT_IMAGES = 60_000  # the centroids are fitted on at most this many images (all of MNIST); every image is then assigned
ITERATIONS = 30


def cluster_names(k: int) -> list[str]:
    """Names that cannot be mistaken for a dataset's classes ("7" would read as the digit)."""
    return [f"cluster-{i}" for i in range(k)]


def image_features(images, chunk: int = 4096) -> torch.Tensor:
    """(N, C·S·S) float features of a decoded dataset (items {"pixels": uint8/uint16 CHW}): each image averaged
    down to CLUSTER_SIDE pixels a side, in [0, 1]."""
    parts = []
    for start in range(0, len(images), chunk):
        pixels = np.stack(images[start : start + chunk]["pixels"])
        x = torch.from_numpy(pixels.astype(np.float32) / np.iinfo(pixels.dtype).max)
        side = min(CLUSTER_SIDE, x.shape[-1], x.shape[-2])
        parts.append(F.adaptive_avg_pool2d(x, side).flatten(1))
    return torch.cat(parts)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([torch.cdist(x[i : i + chunk], centroids).argmin(1) for i in range(0, len(x), chunk)])


def kmeans(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k centroids of the rows of x: k-means++ seeding, then Lloyd's iterations; a pure function of (x, k, seed)."""
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    dist = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):  # each next seed drawn with probability ∝ its squared distance to the nearest one
        # all left coincide with a seed (copies of one image): any of them
        chosen.append(int(torch.multinomial(dist, 1, generator=g)) if dist.sum() > 0 else
                      int(torch.randint(len(x), (1,), generator=g)))
        dist = torch.minimum(dist, ((x - x[chosen[-1]]) ** 2).sum(1))
    centroids = x[chosen].clone()
    for _ in range(ITERATIONS):
        assign = nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return centroids


def cluster_images(images, k: int, seed: int) -> tuple[list[int], list[int]]:
    """(a cluster id per image, the size of each cluster) for a decoded dataset: centroids fitted on up to FIT_IMAGES
    of them (a fixed subset for the seed), then every image assigned to its nearest."""
    x = image_features(images)
    g = torch.Generator().manual_seed(seed)
    fit = x[torch.randperm(len(x), generator=g)[:FIT_IMAGES]] if len(x) > FIT_IMAGES else x
    assign = nearest(x, kmeans(fit, k, seed))
    return assign.tolist(), torch.bincount(assign, minlength=k).tolist()


def draw_clusters(sizes: list[int], seeds: list[int]) -> list[int]:
    """A cluster for each image, drawn in proportion to the clusters' training sizes from the image's seed alone
    (an RNG of its own, apart from the noise's), so image k is the same whatever else is drawn."""
    p = np.asarray(sizes, dtype=np.float64)
    p /= p.sum()
    return [int(np.random.default_rng([seed, 0x5E1F]).choice(len(p), p=p)) for seed in seeds]


def drawn_names(names: list[str], sizes: list[int], seeds: list[int]) -> list[str]:
    """draw_clusters, as the clusters' names."""
    return [names[k] for k in draw_clusters(sizes, seeds)]
