"""Small things every part needs once: an error's first line, writes that are complete or absent, an output folder
proven writable, where our caches live, the device and dtype names of the command lines."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError

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


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(d for d, ok in available.items() if ok))
    if not available[name]:
        raise UserError(f"--device {name}: not available on this machine; use --device auto.")
    return torch.device(name)


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the device training runs on computes bf16 natively: a CUDA GPU that supports it, or, without CUDA, an
    x86 CPU with AVX512-BF16 or AMX (elsewhere a CPU emulates bf16, slower than fp32)."""
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "false").lower() != "true":
        return torch.cuda.is_bf16_supported()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_mixed_precision(environ=os.environ, bf16_native=native_bf16) -> str:
    """--mixed_precision unset: a precision `accelerate launch` / `accelerate config` chose (fp16, bf16, fp8) is kept;
    otherwise ('no' is also what a bare `accelerate launch` passes) bf16 where the hardware computes it natively,
    else fp32 ('no'). bf16 autocast trains the default MNIST run 1.43x faster on an AVX512-BF16 CPU at the same
    quality (README Quality); --mixed_precision no keeps fp32."""
    launcher = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher != "no":
        return launcher
    return "bf16" if bf16_native() else "no"


_CREATED: list[Path] = []  # folders prepare_output_dir made in this process: removed again if a command fails


def prepare_output_dir(path: Path) -> Path:
    """Create the folder and prove it takes a file, before any time is spent sampling. A folder made here and still
    empty when the command fails is removed (cli.run), so an error never leaves empty folders behind."""
    first_new = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if first_new is not None:
            _CREATED.append(first_new)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--output_dir {path}: cannot write there ({e.strerror or e}); pass a writable "
                        "folder.") from None
    return path


def remove_empty_created() -> None:
    """After a failed command: the folders prepare_output_dir made, if nothing was written into them."""
    while _CREATED:
        folder = _CREATED.pop()
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder)


def check_writable(path: Path, flag: str = "--output_dir") -> None:
    """Before hours of work: the folder, or the nearest folder above it that exists, takes new files."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write there ({existing} is not a writable folder); pass a writable "
                        "folder.")


def cache_root(cache_dir: str | None, name: str) -> Path:
    """Folder `name` for one of our caches: under --cache_dir when given, else beside 🤗 datasets' own cache."""
    import datasets.config

    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@contextmanager
def rng_untouched():
    """The global RNGs (CPU, and CUDA when present) as they were on entry: maintenance between updates (a checkpoint
    builds a UNet to save the EMA, which draws initial weights) must never change the training run."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
