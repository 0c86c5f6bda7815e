"""Resumable checkpoints: `checkpoint-N/` = accelerate save_state (optimizer, LR schedule, every rank's RNG)
with the UNet (and EMA UNet) in diffusers format, written under a temporary name and renamed when complete."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .errors import UserError
from .utils import rng_untouched

STATE_FILE = "trainer_state.json"  # written last: a folder without it is not a checkpoint
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in output_dir, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(output_dir, resume_from: str | None) -> Path | None:
    """latest | checkpoint-N | a path → the checkpoint folder; None when there is nothing to resume.
    'latest' with no checkpoint starts fresh (as diffusers' scripts do); a named one that is missing is an error."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not path.is_dir() and _NAME.match(resume_from):
        path = Path(output_dir) / resume_from
    if not (path / STATE_FILE).is_file():
        have = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise UserError(
            f"--resume_from_checkpoint {resume_from}: no complete checkpoint there "
            f"(checkpoints in {output_dir}: {have}); use 'latest' or one of those."
        )
    return path


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def batch_geometry(cfg, accelerator) -> dict:
    """What the data position and the LR schedule are counted in: recorded in every checkpoint, checked on resume."""
    return {"train_batch_size": cfg.train_batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "num_processes": accelerator.num_processes}


def check_resumable(checkpoint: Path, model, *, use_ema: bool, batch: dict) -> None:
    """Before anything is written: the checkpoint was made by a run this one can continue exactly. `batch`:
    train_batch_size, gradient_accumulation_steps and num_processes, which the data position and the LR schedule
    are counted in."""
    from . import lora

    where = f"--resume_from_checkpoint {checkpoint}"
    saved = read_state(checkpoint).get("batch")
    if saved and saved != batch:  # checkpoints written before batch geometry was recorded are not checked
        differ = ", ".join(f"{k} {saved[k]} (now {batch.get(k)})" for k in saved if saved[k] != batch.get(k))
        raise UserError(f"{where}: it was trained with {differ}; resume with the same values (its data position "
                        "and LR schedule are counted in those batches), or start a new run from its weights.")
    if lora.has_adapters(model):
        has_ema = (checkpoint / "ema").is_dir()
    else:
        has_ema = (checkpoint / "unet_ema").is_dir()
        config_file = checkpoint / "unet" / "config.json"
        theirs = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if theirs.get("_class_name", type(model).__name__) != type(model).__name__:
            raise UserError(f"{where}: it holds a {theirs['_class_name']}, this script trains a "
                            f"{type(model).__name__}; resume it with the script that wrote it.")
        ours = dict(model.config)
        differ = [k for k in theirs if not k.startswith("_") and k in ours and _jsonable(ours[k]) != theirs[k]]
        if differ:
            k = differ[0]
            flags = "--class_conditional (and the data)" if k == "num_class_embeds" else "--unet/--config"
            raise UserError(f"{where}: its UNet has {k}={theirs[k]} where this run's has {_jsonable(ours[k])}; "
                            f"resume with the {flags} it was trained with.")
    if use_ema != has_ema:
        raise UserError(f"{where}: it {'has no' if use_ema else 'carries an'} EMA but this run has --use_ema "
                        f"{str(use_ema).lower()}; resume with --use_ema {str(has_ema).lower()}.")


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))


def save_checkpoint(accelerator, output_dir, global_step: int, state: dict, total_limit: int | None,
                    write_extra=None) -> Path:
    """Every rank calls this (each saves its RNG state). Files go to .checkpoint-N.partial; the main process
    adds write_extra(folder)'s files and trainer_state.json, and renames, so a run killed mid-save leaves nothing
    'latest' would pick."""
    final = Path(output_dir) / f"checkpoint-{global_step}"
    partial = Path(output_dir) / f".checkpoint-{global_step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(partial)
        (partial / STATE_FILE).write_text(json.dumps({"global_step": global_step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        rotate(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def rotate(output_dir, total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond total_limit; returns what was removed."""
    found = list_checkpoints(output_dir)
    if total_limit is None or len(found) <= total_limit:
        return []
    removed = found[: len(found) - total_limit]
    for path in removed:
        shutil.rmtree(path)
    return removed


def register_diffusers_format(accelerator, weights) -> None:
    """Checkpoints hold the model as `unet/` (and `unet_ema/`) in diffusers format instead of accelerate's
    anonymous weights file, so any checkpoint also loads with plain `from_pretrained`. A LoRA run's hold its adapters
    only, as `pytorch_lora_weights.safetensors` (and `ema/pytorch_lora_weights.safetensors`), small; their EMA
    state resumes from accelerate's own file (registered in trainer.set_up). Under FSDP and ZeRO-3, Accelerate also
    writes its own sharded files, which resume the weights exactly; unet/ and unet_ema/ are then the whole weights
    that every rank gathers (weights.whole), and the EMA resumes from unet_ema/."""
    from . import lora

    def save_hook(models, state_dicts, folder):
        # rng_untouched: saving the EMA builds a UNet (random init); accelerate records the RNG state AFTER this
        # hook, and it must be the run's, not one a few draws later
        with rng_untouched():
            _save_models(models, state_dicts, Path(folder))

    def _save_models(models, state_dicts, folder: Path):  # on every rank: gathering sharded weights needs them all
        for model in models:
            model = accelerator.unwrap_model(model, keep_torch_compile=False)  # --compile: the module it wraps
            if lora.has_adapters(model):
                if accelerator.is_main_process:
                    lora.save(model, folder)
                    if weights.ema is not None:
                        with weights.swapped_in() as shipped:
                            lora.save(shipped, folder / "ema")
            else:
                if weights.ema is not None:
                    weights.save_average(folder / "unet_ema")
                with weights.whole(average=False) as whole:
                    if whole is not None:
                        whole.save_pretrained(str(folder / "unet"))
            if state_dicts:  # accelerate's own copy of the weights; FSDP and DeepSpeed pass none (they write theirs)
                state_dicts.pop()

    def load_hook(models, folder):
        while models:  # empty under FSDP and DeepSpeed: Accelerate loads their sharded files itself
            model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
            if lora.has_adapters(model):
                lora.load_into(model, Path(folder))
                continue
            loaded = type(model).from_pretrained(str(folder), subfolder="unet")
            model.load_state_dict(loaded.state_dict())
        if weights.ema is not None and weights.whole_model:
            weights.load_average(Path(folder) / "unet_ema")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
