"""Captions: read and check the caption column once, index every unique caption, and pick one caption per
sample on the batch (a random one of a list; the empty prompt with probability caption_dropout)."""

from __future__ import annotations

import torch

from ..errors import UserError

EMPTY = 0  # the empty prompt is always caption 0: classifier-free guidance's unconditional input


def caption_candidates(ds, caption_column: str) -> list[list[str]]:
    """Each row's captions as a list (a string column gives one each); a missing column lists the columns,
    an empty or non-string caption names its row."""
    if caption_column not in ds.column_names:
        raise UserError(f"--caption_column '{caption_column}' not in the dataset; its columns are: "
                        f"{', '.join(ds.column_names)}.")
    rows = []
    for i, value in enumerate(ds[caption_column]):
        options = [value] if isinstance(value, str) else value
        if not isinstance(options, (list, tuple)) or not all(isinstance(c, str) for c in options):
            raise UserError(f"--caption_column '{caption_column}', row {i}: expected a string or a list of strings, "
                            f"got {type(value).__name__}; fix that row or choose another column.")
        options = [c for c in options if c.strip()]
        if not options:
            raise UserError(f"--caption_column '{caption_column}', row {i}: empty caption; write one, or drop "
                            "that row (--caption_dropout already trains the empty prompt).")
        rows.append(list(options))
    return rows


def index_captions(rows: list[list[str]], extra: list[str] = ()) -> tuple[list[str], list[list[int]]]:
    """(unique captions with "" first and `extra` included, each row's caption ids)."""
    unique = {"": EMPTY}
    for caption in [c for row in rows for c in row] + list(extra):
        unique.setdefault(caption, len(unique))
    return list(unique), [[unique[c] for c in row] for row in rows]


def pick_captions(row_ids: list[list[int]], dropout: float) -> torch.Tensor:
    """One caption id per sample from the global (checkpointed) torch RNG: a uniformly chosen one of its
    captions, or EMPTY with probability `dropout`."""
    choice = torch.rand(len(row_ids))
    drop = torch.rand(len(row_ids)) < dropout
    ids = [row[int(u * len(row))] for row, u in zip(row_ids, choice.tolist())]
    return torch.where(drop, torch.full((len(ids),), EMPTY), torch.tensor(ids))


def default_validation_prompts(dataset_name: str | None, rows: list[list[str]], count: int = 4) -> list[str]:
    """The sample grids' prompts when --validation_prompts is unset: a built-in dataset's classes in label order
    (its first caption template), else the dataset's first `count` distinct captions: the grids show what the run
    trains on, never digits in a fine-tune on something else."""
    from .builtin import DIGITS, FASHION_MNIST_CLASSES, class_captions

    classes = {"mnist": DIGITS, "fashion_mnist": FASHION_MNIST_CLASSES}.get(dataset_name or "")
    if classes is not None:
        return [captions[0] for captions in class_captions(dataset_name, classes)]
    return list(dict.fromkeys(row[0] for row in rows))[:count]

