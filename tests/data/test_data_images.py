import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from difftrain.data import EpochSampler, augment, collate, images, sources, to_model_range, to_uint8
from difftrain.errors import UserError


def _dataset(arrays):
    return datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays]},
                                      features=datasets.Features(image=datasets.Image()))


def test_grayscale_stays_one_channel_and_rgb_on_request():
    ds = _dataset([np.full((28, 28), 7, np.uint8)] * 2)
    gray = images.prepare_images(ds, "image", 32, center_crop=True, image_mode="auto")
    assert gray[0]["pixels"].shape == (1, 32, 32) and gray[0]["pixels"].dtype == np.uint8
    rgb = images.prepare_images(ds, "image", 16, center_crop=True, image_mode="RGB")
    assert rgb[0]["pixels"].shape == (3, 16, 16) and int(rgb[0]["pixels"][1, 5, 5]) == 7


def test_center_crop_and_random_crop_on_the_batch():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 20:] = 255  # right half white
    ds = _dataset([wide])
    centred = images.prepare_images(ds, "image", 10, center_crop=True, image_mode="auto")
    assert centred[0]["pixels"].shape == (3, 10, 10)
    kept = images.prepare_images(ds, "image", 10, center_crop=False, image_mode="auto")
    assert kept[0]["pixels"].shape == (3, 10, 20)  # shorter side resized, long side kept for the batch crop
    torch.manual_seed(0)
    crops = {augment(collate([kept[0]])["pixels"], 10, random_flip=False).mean().item() for _ in range(20)}
    assert len(crops) > 2  # different crops of the black/white border


def test_decoded_once_then_read_from_the_cache(tmp_path):
    _dataset([np.arange(64, dtype=np.uint8).reshape(8, 8)] * 4).save_to_disk(str(tmp_path / "src"))
    first = images.prepare_images(datasets.load_from_disk(str(tmp_path / "src")), "image", 8, center_crop=True,
                                  image_mode="auto")
    cache = first.cache_files[0]["filename"]
    assert "cache-" in cache
    stamp = __import__("os").stat(cache).st_mtime_ns
    second = images.prepare_images(datasets.load_from_disk(str(tmp_path / "src")), "image", 8, center_crop=True,
                                   image_mode="auto")
    assert second.cache_files[0]["filename"] == cache and __import__("os").stat(cache).st_mtime_ns == stamp
    assert np.array_equal(second[3]["pixels"][0], np.arange(64).reshape(8, 8))


def test_corrupt_image_is_named(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    ds = sources.load_source(None, str(tmp_path))
    with pytest.raises(UserError, match="broken.png"):
        images.prepare_images(ds, "image", 8, center_crop=True, image_mode="auto")


def test_empty_dataset():
    with pytest.raises(UserError, match="dataset is empty"):
        images.prepare_images(_dataset([]).select([]), "image", 8, center_crop=True, image_mode="auto")


def test_pixel_range_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(u8)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), u8)
    assert torch.equal(to_uint8(torch.tensor([-1.0, 0.0, 1.0, 1.5])), torch.tensor([0, 128, 255, 255], dtype=torch.uint8))


def test_random_flip_on_the_batch():
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out = augment(img, 4, random_flip=True)
    base, flipped = to_model_range(img[0]), to_model_range(img[0]).flip(-1)
    same = [torch.equal(o, base) for o in out]
    mirrored = [torch.equal(o, flipped) for o in out]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    assert torch.equal(augment(img, 4, random_flip=False), to_model_range(img))


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochSampler(100, seed=3)
    first = list(s)
    assert sorted(first) == list(range(100)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first and list(EpochSampler(100, seed=4)) != first


def _sixteen_bit_png(tmp_path):
    """A 0–65535 horizontal gradient saved as a 16-bit grayscale PNG, read back as datasets would."""
    gradient = np.tile(np.linspace(0, 65535, 32), (32, 1)).round().astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g.png")
    return datasets.Dataset.from_dict({"image": [str(tmp_path / "g.png")]},
                                      features=datasets.Features(image=datasets.Image())), gradient


def test_16_bit_images_are_rescaled_never_clipped(tmp_path):
    ds, gradient = _sixteen_bit_png(tmp_path)
    eight = images.prepare_images(ds, "image", 32, center_crop=True, image_mode="auto")[0]["pixels"]
    assert eight.dtype == np.uint8 and eight.min() == 0 and eight.max() == 255  # PIL's convert("L") gave 146–255
    assert np.abs(eight[0].astype(int) - np.rint(gradient / 257)).max() <= 1


def test_preserve_input_precision_keeps_16_bits(tmp_path):
    ds, gradient = _sixteen_bit_png(tmp_path)
    kept = images.prepare_images(ds, "image", 32, center_crop=True, image_mode="auto", bits=16)[0]["pixels"]
    assert kept.dtype == np.uint16 and np.array_equal(kept[0], gradient)
    batch = collate([{"pixels": kept}])["pixels"]
    x = augment(batch, 32, random_flip=False)
    assert x.min() == -1 and x.max() == 1 and len(torch.unique(x)) == 32  # 32 levels survive, not 8-bit steps
    eight_bit = images.prepare_images(_dataset([np.full((8, 8), 255, np.uint8)]), "image", 8, center_crop=True,
                                      image_mode="auto", bits=16)[0]["pixels"]
    assert eight_bit.dtype == np.uint16 and eight_bit.max() == 65535  # an 8-bit image in a 16-bit run: same range


def test_a_colour_image_among_grayscale_ones_keeps_the_set_in_colour():
    gray, colour = np.full((8, 8), 50, np.uint8), np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    out = images.prepare_images(_dataset([gray, colour]), "image", 8, center_crop=True, image_mode="auto")
    assert out[0]["pixels"].shape == (3, 8, 8) and int(out[1]["pixels"][0, 0, 0]) == 200  # red stays red
    assert int(out[0]["pixels"][1, 0, 0]) == 50


def test_alpha_is_composited_on_white_with_a_note():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, 3] = 255  # top half opaque black, bottom half transparent
    with pytest.warns(UserWarning, match="composited on white"):
        out = images.prepare_images(_dataset([rgba]), "image", 8, center_crop=True, image_mode="auto")
    pixels = out[0]["pixels"]
    assert pixels.shape == (3, 8, 8) and pixels[:, :4].max() == 0 and pixels[:, 4:].min() == 255


def test_a_dataset_without_splits_refuses_another_split(tmp_path):
    folder = tmp_path / "single"
    _dataset([np.zeros((8, 8), np.uint8)]).save_to_disk(str(folder))
    assert len(sources.load_source(str(folder), None, split="train")) == 1
    with pytest.raises(UserError, match="has no splits .* --split test cannot be honoured"):
        sources.load_source(str(folder), None, split="test")


def test_a_large_upscale_is_announced():
    with pytest.warns(UserWarning, match="enlarges the images .* 8x on each side, 64x the pixels"):
        images.prepare_images(_dataset([np.zeros((8, 8), np.uint8)]), "image", 64, center_crop=True, image_mode="auto")
