"""benchmarks/quality.py end to end on configs/tiny.yaml: it trains (as a user would, in a subprocess), samples,
scores and writes its row, JSON and grid. Quality numbers are not asserted (a 20-step model draws noise); the
shape of what it reports is."""

import json

import numpy as np
import pytest

from benchmarks import quality
from difftrain import classifier as clf
from difftrain.autoguidance import AUTOGUIDANCE


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    x, y, labels = clf.labelled_images("mnist", "train", num_samples=300)
    network = clf.train_classifier(x, y, len(labels), epochs=1, batch_size=32)
    return clf.save_classifier(clf.Classifier(network, {"architecture": clf.ARCHITECTURE, "labels": labels}),
                               tmp_path_factory.mktemp("classifier"))


def test_trains_scores_and_writes_row_json_and_grid(tmp_path, tiny_classifier):
    results = tmp_path / "results"
    record = quality.main(["--model", str(tmp_path / "tiny"), "--num_samples", "20", "--num_inference_steps", "4",
                           "--classifier", str(tiny_classifier), "--results_dir", str(results),
                           "--", "train_unconditional.py", "--config", "configs/tiny.yaml"])
    assert (tmp_path / "tiny" / "model_index.json").is_file()
    assert record["train_images"] == 20 * 8 and record["train_seconds"] > 0 and record["images_per_s"] > 0
    assert record["num_samples"] == 20 and record["scheduler"] == "euler_a" and record["steps"] == 4
    assert 0 <= record["legible"] <= 1 and 0 <= record["rarest_share"] <= 0.1 + 1e-9
    assert abs(sum(record["class_shares"]) - 1) < 1e-3
    assert 0 <= record["real_legible"] <= 1 and 0 <= record["real_rarest_share"] <= 0.1 + 1e-9
    assert np.isfinite(record["fid"]) and np.isfinite(record["fid_floor"]) and record["fid_floor"] < record["fid"]
    assert json.loads((results / "quality-tiny.json").read_text())["fid"] == record["fid"]
    rows = (results / "quality.md").read_text().splitlines()
    assert rows[0].startswith("| run |") and rows[-1].startswith(f"| tiny | euler_a 4, guidance {AUTOGUIDANCE:g} | 20 |")
    assert len(rows[-1].split("|")) == len(rows[0].split("|"))
    from PIL import Image

    assert Image.open(results / "quality-tiny.png").size == (10 * 16, 2 * 16)  # 20 images, 10 a row, 16 px

    # scoring the folder again (no training command) keeps the training figures it recorded
    again = quality.main(["--model", str(tmp_path / "tiny"), "--num_samples", "20", "--num_inference_steps", "4",
                          "--classifier", str(tiny_classifier), "--results_dir", str(results), "--no_fid",
                          "--name", "again"])
    assert again["train_seconds"] == record["train_seconds"] and "fid" not in again
    assert (results / "quality.md").read_text().splitlines()[-1].startswith("| again |")
