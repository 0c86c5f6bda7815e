"""Text conditioning: the shipped MiniLM encoder, truncation, and caption embeddings computed once per unique
caption (counted) and reused from disk."""

import warnings

import pytest
import torch

from conftest import ROOT
from difftrain.text import CaptionEmbeddings, TextEncoder, default_text_encoder_path


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder.load(default_text_encoder_path())


def test_minilm_gives_token_states_384_wide(minilm):
    states = minilm.encode(["a handwritten digit seven", "the number 7"])
    assert states.shape == (2, 77, 384) and minilm.width == 384
    assert not torch.allclose(states[0], states[1])


def test_long_prompts_are_truncated_with_one_warning(minilm):
    minilm.warned_truncation = False
    long = " ".join(["digit"] * 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert minilm.encode([long]).shape == (1, 77, 384)
        minilm.encode([long])
    assert [str(w.message) for w in caught if "truncated" in str(w.message)].__len__() == 1


def test_embedding_table_matches_direct_encoding_and_is_reused_from_disk(minilm, tmp_path, monkeypatch):
    captions = ["", "a red circle", "a blue square", "a red circle"]
    table = CaptionEmbeddings.build(minilm, captions, tmp_path)
    assert table.captions == ["", "a red circle", "a blue square"]
    direct = minilm.encode(["a blue square", ""])
    assert torch.allclose(table.embed(["a blue square", ""]), direct, atol=1e-5)
    calls = []
    monkeypatch.setattr(TextEncoder, "encode", lambda self, prompts: calls.append(prompts))
    again = CaptionEmbeddings.build(minilm, captions, tmp_path)
    assert calls == [] and torch.equal(again.lookup([2, 0]), table.lookup([2, 0]))
    mmap = CaptionEmbeddings(again.captions, again.table.numpy(), in_memory_bytes=0)  # the large-table path
    assert torch.equal(mmap.lookup([2, 0]), table.lookup([2, 0]))


def test_training_encodes_each_unique_caption_once_across_an_epoch(tmp_path, monkeypatch, train_text_to_image):
    """8 updates of 8 = one epoch of 64 MNIST images: every caption the epoch can draw (all candidates of every
    row, the empty prompt, the validation prompts) is encoded exactly once, before training; a second run
    reads them from the disk cache and encodes nothing."""
    from test_train_text_to_image import TINY_TEXT_UNET

    encoded = []
    real_encode = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, prompts: (encoded.extend(prompts),
                                                                      real_encode(self, prompts))[1])
    flags = ["--config", ROOT / "configs/tiny.yaml", "--unet", TINY_TEXT_UNET, "--max_train_steps", 8,
             "--validation_steps", 100, "--cache_dir", tmp_path / "cache",
             "--validation_prompts", "a handwritten digit one", "a digit nobody wrote"]
    assert train_text_to_image(*flags, "--output_dir", tmp_path / "a") == 0
    from difftrain.data.builtin import load_builtin

    rows = load_builtin("mnist", "train", str(tmp_path / "cache")).select(range(64))["text"]
    expected = {"", "a digit nobody wrote", *(c for row in rows for c in row)}
    assert len(encoded) == len(set(encoded)) and set(encoded) == expected
    encoded.clear()
    assert train_text_to_image(*flags, "--output_dir", tmp_path / "b") == 0
    assert encoded == []
