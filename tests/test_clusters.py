"""Pixel clusters (clusters.py): k-means of the training images as the classes of the default run, drawn by their
sizes when sampling; the --num_clusters option; a tiny clustered run end to end."""

import json
import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from difftrain.clusters import CLUSTERS, cluster_images, cluster_names, draw_clusters, kmeans
from difftrain.config import parse
from difftrain.errors import UserError
from difftrain.unconditional import cluster_labels
from difftrain.unconditional_config import UnconditionalConfig, autoguidance_snapshot, num_clusters

TINY = ["--config", ROOT / "configs/tiny.yaml"]


class Decoded:
    """A stand-in for a decoded dataset: slices give {"pixels": [uint8 CHW arrays]}."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        return {"pixels": list(self.pixels[index])}


def bars(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 28 px images of three kinds (a bar at the left, the middle or the right) and their kinds."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, n)
    images = rng.integers(0, 40, (n, 1, 28, 28)).astype(np.uint8)
    for i, k in enumerate(kinds):
        images[i, 0, :, 2 + 9 * k : 8 + 9 * k] = 255
    return images, kinds


def test_kmeans_finds_separated_groups_and_is_a_function_of_its_seed():
    images, kinds = bars(300)
    ids, sizes = cluster_images(Decoded(images), 3, seed=0)
    ids = np.asarray(ids)
    assert sum(sizes) == 300 and sizes == np.bincount(ids, minlength=3).tolist()
    # each cluster is one kind of image, and each kind one cluster
    assert all(len(set(kinds[ids == c])) == 1 for c in range(3)) and len(set(ids)) == 3
    assert cluster_images(Decoded(images), 3, seed=0) == (ids.tolist(), sizes)
    x = torch.randn(50, 4)
    assert torch.equal(kmeans(x, 5, seed=1), kmeans(x, 5, seed=1))


def test_clusters_are_drawn_by_size_from_each_seed_alone():
    drawn = np.asarray(draw_clusters([1, 3, 0], list(range(10_000))))
    assert set(drawn.tolist()) == {0, 1} and 0.72 < drawn.mean() < 0.78  # a cluster of size 0 is never drawn
    assert draw_clusters([1, 3, 0], [7]) == [drawn[7]]  # image k's cluster does not depend on the others drawn
    assert cluster_names(3) == ["cluster-0", "cluster-1", "cluster-2"]


def test_num_clusters_resolves_and_refuses_what_does_not_fit():
    assert num_clusters(parse(UnconditionalConfig, [])) == CLUSTERS == 100  # the default run's
    for other in (["--class_conditional"], ["--pretrained_model_name_or_path", "x"],
                  ["--vae_name_or_path", "mock"], ["--autoguidance_snapshot", "0.2"]):
        assert num_clusters(parse(UnconditionalConfig, other)) == 0
    assert autoguidance_snapshot(parse(UnconditionalConfig, ["--num_clusters", "0"])) > 0  # autoguided instead
    # guidance and label dropout shape a clustered model too
    cfg = parse(UnconditionalConfig, ["--label_dropout", "0.2", "--validation_guidance_scale", "3"])
    assert (cfg.label_dropout, cfg.validation_guidance_scale) == (0.2, 3.0)
    for bad, says in ((["--num_clusters", "1"], "0 \\(none\\) or 2 or more"),
                      (["--num_clusters", "8", "--class_conditional"], "does not go with --class_conditional"),
                      (["--num_clusters", "8", "--vae_name_or_path", "mock"], "does not go with --vae_name_or_path"),
                      (["--num_clusters", "0", "--label_dropout", "0.2"], "--class_conditional")):
        with pytest.raises(UserError, match=says):
            parse(UnconditionalConfig, bad)


def test_unset_clusters_need_enough_images_and_a_set_count_must_fit():
    from difftrain.unconditional import resolved_clusters

    assert resolved_clusters(UnconditionalConfig(), 1000) == 100 and resolved_clusters(UnconditionalConfig(), 999) == 0
    assert autoguidance_snapshot(UnconditionalConfig(), clusters=0) > 0  # too few to cluster: autoguided instead
    assert resolved_clusters(UnconditionalConfig(num_clusters=5), 64) == 5
    with pytest.raises(UserError, match="--num_clusters 30 is more than the 25 training images"):
        resolved_clusters(UnconditionalConfig(num_clusters=30), 25)
    with pytest.raises(UserError, match="--label_dropout shape\\(s\\) a class-conditional .* and the 64"):
        resolved_clusters(UnconditionalConfig(label_dropout=0.2), 64)
    images, _ = bars(25)
    ids, names, sizes = cluster_labels(UnconditionalConfig(seed=0), Decoded(images), 2)
    assert names == ["cluster-0", "cluster-1"] and sum(sizes) == 25 and len(ids) == 25
    same = np.repeat(images[:1], 5, axis=0)  # copies of one image: k-means still seeds (any copy)
    assert sum(cluster_labels(UnconditionalConfig(seed=0), Decoded(same), 2)[2]) == 5


@pytest.fixture(scope="module")
def tiny_cluster_run(tmp_path_factory, datasets_cache):
    import train_unconditional

    out = tmp_path_factory.mktemp("clusters") / "run"
    assert run_script(train_unconditional, [*TINY, "--num_clusters", "3", "--output_dir", out]) == 0
    return out


def test_a_clustered_run_writes_a_pipeline_that_draws_its_clusters(tiny_cluster_run):
    from diffusers import DiffusionPipeline

    from difftrain.pipelines import ClassConditionalPipeline

    index = json.loads((tiny_cluster_run / "model_index.json").read_text())
    assert index["_class_name"] == "ClassConditionalPipeline" and index["class_names"] == cluster_names(3)
    assert sum(index["class_prior"]) == 64  # tiny.yaml's 64 images
    assert json.loads((tiny_cluster_run / "unet" / "config.json").read_text())["num_class_embeds"] == 4
    pipe = ClassConditionalPipeline.from_pretrained(tiny_cluster_run)
    ours = pipe(num_images=2, num_inference_steps=3, output_type="np").images
    assert ours.shape == (2, 16, 16, 1)
    # plain diffusers, through the folder's pipeline.py: the same images for the same seeds
    plain = DiffusionPipeline.from_pretrained(tiny_cluster_run, custom_pipeline="pipeline", trust_remote_code=True)
    assert np.array_equal(plain(num_images=2, num_inference_steps=3, output_type="np").images, ours)
    # asked by name, a cluster is drawn as asked; a model without a prior needs names
    assert pipe(class_labels=["cluster-2"], num_inference_steps=3, output_type="np").images.shape[0] == 1
    with pytest.raises(ValueError, match="num_images: with class_labels, one image is drawn per label"):
        pipe(class_labels=["cluster-2"], num_images=2, num_inference_steps=3)


def test_sample_py_draws_clusters_by_size_unless_told(tiny_cluster_run, tmp_path):
    import sample

    prior = json.loads((tiny_cluster_run / "model_index.json").read_text())["class_prior"]
    out = tmp_path / "drawn"
    assert run_script(sample, ["--model", tiny_cluster_run, "--num_images", "6", "--num_inference_steps", "3",
                               "--seed", "4", "--output_dir", out]) == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    expected = [f"cluster-{k}" for k in draw_clusters(prior, list(range(4, 10)))]
    assert [r["class_label"] for r in records] == expected
    assert all(f"--class_label {r['class_label']}" in r["command"] for r in records)  # each image regenerates alone
    out = tmp_path / "asked"
    assert run_script(sample, ["--model", tiny_cluster_run, "--num_images", "2", "--num_inference_steps", "3",
                               "--class_label", "1", "--output_dir", out]) == 0
    assert {json.loads(line)["class_label"] for line in (out / "metadata.jsonl").read_text().splitlines()} == \
        {"cluster-1"}
