"""Dataset sources (data/sources.py): Hub ids, save_to_disk folders and image folders, and the image column."""

import datasets
import numpy as np
import pytest
from PIL import Image

from difftrain.data import sources
from difftrain.errors import UserError


def test_unknown_hub_id_offline_names_the_builtins():
    with pytest.raises(UserError, match="could not load dataset 'nobody/no-such-dataset'.*mnist.*fashion_mnist"):
        sources.load_source("nobody/no-such-dataset", None)


def test_save_to_disk_folder_and_its_splits(tmp_path):
    img = Image.fromarray(np.zeros((8, 8), np.uint8))
    feats = datasets.Features(picture=datasets.Image(), n=datasets.Value("int32"))
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({"picture": [img] * 3, "n": [1, 2, 3]}, features=feats))
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = sources.load_source(str(tmp_path / "saved"), None)
    assert len(ds) == 3
    assert sources.find_image_column(ds, None) == "picture"
    with pytest.raises(UserError, match="has splits train"):
        sources.load_source(str(tmp_path / "saved"), None, split="test")


def test_missing_image_column_lists_the_columns(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a"], "n": [1]})
    with pytest.raises(UserError, match="no image column.*text, n"):
        sources.find_image_column(ds, None)
    with pytest.raises(UserError, match="--image_column 'img' not in the dataset; its columns are: text, n"):
        sources.find_image_column(ds, "img")


def test_image_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
    ds = sources.load_source(None, str(tmp_path))
    assert len(ds) == 3 and sources.find_image_column(ds, None) == "image"


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        sources.load_source(None, str(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="holds no images"):
        sources.load_source(None, str(tmp_path))


def test_a_malformed_metadata_file_is_one_line(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match="cannot read it as an image folder .* metadata.jsonl"):
        sources.load_source(None, str(tmp_path))


def test_an_empty_saved_dataset_is_one_line(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="empty or damaged: save it again"):
        sources.load_source(str(tmp_path / "empty"), None)
