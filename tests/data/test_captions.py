"""Captions: column checks that name the row, unique-caption indexing, the per-sample pick and caption dropout."""

import datasets
import pytest
import torch

from difftrain.data.captions import EMPTY, caption_candidates, index_captions, pick_captions
from difftrain.errors import UserError


def test_string_and_list_columns_become_candidate_lists():
    ds = datasets.Dataset.from_dict({"text": ["a cat", "a dog"], "many": [["x", "y"], ["z"]]})
    assert caption_candidates(ds, "text") == [["a cat"], ["a dog"]]
    assert caption_candidates(ds, "many") == [["x", "y"], ["z"]]


class Rows:
    """Just what caption_candidates reads: column names and a column (Arrow cannot hold mixed types)."""

    def __init__(self, **columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]


@pytest.mark.parametrize("values, message", [
    (["fine", "   "], "row 1: empty caption"),
    (["fine", 3], "row 1: expected a string or a list of strings, got int"),
    (["fine", ["ok", None]], "row 1: expected a string or a list of strings, got list"),
    ([["fine"], []], "row 1: empty caption"),
])
def test_bad_captions_name_their_row(values, message):
    with pytest.raises(UserError, match=message):
        caption_candidates(Rows(text=values), "text")


def test_missing_column_lists_the_columns():
    ds = datasets.Dataset.from_dict({"image": [1], "caption": ["x"]})
    with pytest.raises(UserError, match="its columns are: image, caption"):
        caption_candidates(ds, "text")


def test_index_puts_the_empty_prompt_first_and_dedupes():
    captions, ids = index_captions([["a", "b"], ["b"], ["c", "a"]], extra=["d", "a"])
    assert captions == ["", "a", "b", "c", "d"] and captions[EMPTY] == ""
    assert ids == [[1, 2], [2], [3, 1]]


def test_pick_is_uniform_over_a_rows_captions_and_drops_at_the_given_rate():
    torch.manual_seed(0)
    rows = [[1, 2, 3]] * 20_000
    picked = pick_captions(rows, dropout=0.1)
    counts = torch.bincount(picked, minlength=4).float() / len(rows)
    assert abs(counts[EMPTY] - 0.1) < 0.01
    assert all(abs(c - 0.3) < 0.015 for c in counts[1:])
    assert (pick_captions(rows, dropout=0.0) != EMPTY).all()
    torch.manual_seed(1)
    a = pick_captions(rows[:50], 0.1)
    torch.manual_seed(1)
    assert torch.equal(a, pick_captions(rows[:50], 0.1))  # a pure function of the (checkpointed) RNG


def test_default_validation_prompts_fit_the_dataset():
    from difftrain.text_config import DIGIT_PROMPTS
    from difftrain.data.captions import default_validation_prompts

    rows = [["a cat", "a small cat"], ["a dog"], ["a cat"], ["a bird"], ["a fish"], ["a frog"]]
    assert default_validation_prompts("mnist", rows) == DIGIT_PROMPTS  # label order: prompt k shows digit k
    fashion = default_validation_prompts("fashion_mnist", rows)
    assert len(fashion) == 10 and fashion[0] == "a photo of a t-shirt" and fashion[-1] == "a photo of an ankle boot"
    # any other dataset: its own first distinct captions, never digits
    assert default_validation_prompts("./my-captions", rows) == ["a cat", "a dog", "a bird", "a fish"]
    assert default_validation_prompts(None, rows[:2]) == ["a cat", "a dog"]
