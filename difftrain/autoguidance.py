"""Autoguidance for unconditional models (Karras et al. 2024): the run keeps its shipping weights from early in
training as guide_unet/, and sampling steers away from that weaker model (pipelines.autoguided_predictor). The guide
costs no training, one UNet on disk, and a second forward per sampling step."""

from __future__ import annotations

from pathlib import Path

import torch

from .utils import written_beside

GUIDE_FOLDER = "guide_unet"  # beside unet/ in the run folder; plain diffusers' DDPMPipeline ignores it (unguided)
AUTOGUIDANCE = 2.0  # the default scale: grids, sample.py, evaluate.py (README Quality)
# the fraction of the run at which the guide is kept: the default run's EMA at 0.16 and 0.32 of it guided the final
# model to 82 and 85 % legible digits (300 samples each; README Quality)
AUTOGUIDANCE_SNAPSHOT = 0.3


def snapshot_step(fraction: float, max_steps: int) -> int | None:
    """The update after which the guide is kept; None for no guide."""
    return max(1, round(fraction * max_steps)) if fraction > 0 else None


def save_guide(model: torch.nn.Module, run_folder: Path) -> None:
    """The model as it is now (the shipping weights swapped in) as run_folder/guide_unet, written then renamed."""
    with written_beside(run_folder / GUIDE_FOLDER) as partial:
        model.save_pretrained(str(partial))


def load_guide(folder: Path, unet: torch.nn.Module) -> torch.nn.Module | None:
    """The guide of a run or pipeline folder, in `unet`'s class, dtype and device; None when it has none."""
    if not (Path(folder) / GUIDE_FOLDER / "config.json").is_file():
        return None
    guide = type(unet).from_pretrained(str(Path(folder) / GUIDE_FOLDER), torch_dtype=unet.dtype)
    if _shapes(guide) != _shapes(unet):
        from .errors import UserError

        raise UserError(f"{folder}/{GUIDE_FOLDER} is not the architecture of its unet/; delete {GUIDE_FOLDER}/ "
                        "(sampling is then unguided).")
    return guide.to(unet.device).eval()


def _shapes(unet) -> dict:
    """What must match for the two to share an input and an output: every weight's name and shape (the configs may
    differ in bookkeeping, e.g. an EMA folder's decay)."""
    return {name: tuple(p.shape) for name, p in unet.state_dict().items()}
