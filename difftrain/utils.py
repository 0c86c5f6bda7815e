"""Small things every part needs once: an error's first line, writes that are complete or absent, where our caches
live, and the dtype names of the command lines."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # --dtype / --mixed_precision names


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextmanager
def written_beside(path: str | Path, suffix: str = ".partial"):
    """Yield a sibling path to write a file or a folder to; when the block ends without an error it replaces `path`.
    A reader never finds a half-written `path`: an interrupted write leaves only the sibling, cleared next time."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    with written_beside(path) as tmp:
        tmp.write_text(text)


def cache_root(cache_dir: str | None, name: str) -> Path:
    """Folder `name` for one of our caches: under --cache_dir when given, else beside 🤗 datasets' own cache."""
    import datasets.config

    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
