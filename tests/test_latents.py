"""latents.py: the VAE loaded from a pipeline folder, the latent cache (each image's distribution encoded once), and
the resolution a VAE and a UNet can share."""

import numpy as np
import pytest
import torch

from difftrain import latents
from difftrain.data.images import to_model_range
from difftrain.errors import UserError
from test_train_text_to_image import sd_flags


class Images:
    """What cache_latents reads of a decoded dataset: its length, its fingerprint and slices of uint8 CHW pixels."""

    def __init__(self, pixels, fingerprint):
        self.pixels, self._fingerprint = pixels, fingerprint

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, rows):
        return {"pixels": self.pixels[rows]}


def test_cached_latents_are_each_images_distribution_encoded_once(tiny_sd_pipeline, tmp_path, monkeypatch):
    vae = latents.load_vae(str(tiny_sd_pipeline))  # a pipeline folder: its vae/
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (3, 16, 20), dtype=np.uint8) for _ in range(3)]  # wider than tall: centre crop
    images = Images(pixels, "three-random-images")
    cached = latents.cache_latents(vae, images, 16, tmp_path, flipped=True, batch_size=2)
    assert cached.shape == (3, 2, 8, 8, 8)  # (image, view, mean and log-variance of 4 channels, 16 px / 2)
    x = to_model_range(torch.from_numpy(np.stack([p[:, :, 2:18] for p in pixels])))
    for view, batch in enumerate((x, x.flip(-1))):
        expected = latents.encode_distribution(vae, batch)
        assert torch.allclose(torch.from_numpy(np.array(cached[:, view])), expected, atol=1e-5), view
    monkeypatch.setattr(latents, "encode_distribution", lambda *a: pytest.fail("encoded again"))
    assert np.array_equal(latents.cache_latents(vae, images, 16, tmp_path, flipped=True, batch_size=2), cached)
    with pytest.raises(UserError, match="^--vae_name_or_path .*nothing: cannot load an AutoencoderKL there"):
        latents.load_vae(str(tmp_path / "nothing"))


def test_latent_resolution_must_fit_vae_and_unet(tiny_sd_pipeline, shapes_16px, tmp_path, train_text_to_image,
                                                  capsys):
    # VAE 2x, UNet 2x: 18 px is not a multiple of 4
    assert train_text_to_image(*sd_flags(tiny_sd_pipeline, shapes_16px), "--resolution", 18,
                               "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a multiple of 4" in err and "use --resolution 16" in err
