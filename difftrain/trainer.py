"""The ONE training loop, shared by both scripts: Accelerate for devices, precision and scale; EMA;
gradient accumulation with the LR schedule counted in optimizer updates; exact resume; validation grids."""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from . import checkpoints, config, hub
from .data import EpochSampler, collate
from .errors import UserError


@dataclass
class Recipe:
    """What one script trains; everything else is the loop's."""

    model: torch.nn.Module  # the network being trained
    dataset: Any  # items {"pixels": uint8 CHW, ...}
    loss: Callable  # (prepared model, batch) → scalar loss
    save_pipeline: Callable  # (unwrapped model with the weights to ship, folder) → writes the pipeline
    sample_grid: Callable  # (unwrapped model) → PIL image from fixed seeds
    pipeline_class: str
    save_frozen: Callable | None = None  # (folder) → writes the components that do not train, once at the start
    generate: Callable | None = None  # (unwrapped model, seeds, prompts or None) → uint8 NCHW, for --eval_steps
    eval_prompts: list[str] | None = None  # text models: image k of an evaluation gets prompt k mod P


def check_output_dir(cfg, resuming: bool) -> None:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder.")
    previous = [n for n in ("training_config.yaml", "model_index.json") if (out / n).exists()]
    if previous and not resuming and not cfg.overwrite_output_dir:
        raise UserError(
            f"--output_dir {out} already holds a run ({previous[0]}); continue it with "
            "--resume_from_checkpoint latest, start over with --overwrite_output_dir, or pick another --output_dir."
        )


def _make_optimizer(cfg, params):
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (CUDA only).") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _tracker_config(cfg) -> dict:
    # Trackers (tensorboard hparams) take scalars only.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict(cfg).items()}


def _log_grid(accelerator, grid, step: int) -> None:
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            arr = np.asarray(grid.convert("RGB"))
            tracker.writer.add_image("samples", arr, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(grid)]}, step=step)


def train(cfg, build_recipe: Callable[[Any, Accelerator], Recipe]) -> Path:
    """Train with `cfg`; build_recipe(cfg, accelerator) supplies model, data, loss and pipeline writer."""
    out = Path(cfg.output_dir)
    resume = checkpoints.find_resume_checkpoint(out, cfg.resume_from_checkpoint)
    check_output_dir(cfg, resuming=resume is not None)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.logging_dir)),
    )
    if accelerator.device.type == "cpu" and torch.get_num_threads() * accelerator.num_processes < (os.cpu_count() or 1):
        accelerator.print(
            f"note: training on {torch.get_num_threads()} CPU thread(s) per process of {os.cpu_count()} cores; "
            "`accelerate launch` sets OMP_NUM_THREADS=1 on CPU unless given --num_cpu_threads_per_process N."
        )
    if cfg.seed is None:  # drawn once, shared by every rank, recorded in training_config.yaml
        cfg.seed = broadcast_object_list([random.SystemRandom().randrange(2**31)])[0]
    set_seed(cfg.seed)  # same initial weights on every rank
    recipe = build_recipe(cfg, accelerator)  # every user error about data/model surfaces here, before any write
    model = recipe.model
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.enable_xformers_memory_efficient_attention:
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise UserError("--enable_xformers_memory_efficient_attention needs xformers: pip install xformers.") from None
        model.enable_xformers_memory_efficient_attention()

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite_output_dir and resume is None:
            for stale in checkpoints.list_checkpoints(out):  # else 'latest' could pick another run's state
                shutil.rmtree(stale)
        config.dump(cfg, out / "training_config.yaml")
        if recipe.save_frozen is not None:
            recipe.save_frozen(out)
        accelerator.init_trackers(cfg.tracker_project_name, config=_tracker_config(cfg))

    sampler = EpochSampler(len(recipe.dataset), cfg.seed)
    dataloader = torch.utils.data.DataLoader(
        recipe.dataset, batch_size=cfg.train_batch_size, sampler=sampler, collate_fn=collate,
        num_workers=cfg.dataloader_num_workers,
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed
        # run (which starts its iterator after restoring that RNG) would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = _make_optimizer(cfg, model.parameters())
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    set_seed(cfg.seed, device_specific=True)  # different noise on each rank from here on

    # The schedule advances once per optimizer update, on every rank; it is not given to prepare(),
    # which would step it num_processes times per update (diffusers #1957/#3954).
    updates_per_epoch = math.ceil(len(dataloader) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_train_steps or cfg.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=max_steps)
    accelerator.register_for_checkpointing(lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    ema = None
    if config.uses_ema(cfg):
        ema = EMAModel(unwrapped.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=cfg.ema_inv_gamma, power=cfg.ema_power, model_cls=type(unwrapped),
                       model_config=unwrapped.config)
        ema.to(accelerator.device)
    checkpoints.register_diffusers_format(accelerator, ema)

    global_step = 0
    if resume is not None:
        accelerator.print(f"Resuming from {resume}")
        accelerator.load_state(str(resume))
        global_step = checkpoints.read_state(resume)["global_step"]
    first_epoch = global_step // updates_per_epoch
    # Every update but an epoch's last consumes exactly gradient_accumulation_steps batches.
    skip_batches = (global_step % updates_per_epoch) * cfg.gradient_accumulation_steps

    def with_shipping_weights(action):
        """Run action(unwrapped model) with the EMA weights swapped in when EMA is on."""
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        unwrapped.eval()
        try:
            return action(unwrapped)
        finally:
            unwrapped.train()
            if ema is not None:
                ema.restore(unwrapped.parameters())

    def validate(step: int) -> None:
        if accelerator.is_main_process:
            grid = with_shipping_weights(recipe.sample_grid)
            (out / "samples").mkdir(exist_ok=True)
            grid.save(out / "samples" / f"step-{step}.png")
            _log_grid(accelerator, grid, step)

    periodic_evaluation = None
    if cfg.eval_steps:
        from .periodic_evaluation import PeriodicEvaluation

        periodic_evaluation = PeriodicEvaluation(cfg, recipe.generate, recipe.eval_prompts,
                                                 getattr(cfg, "eval_classifier", None), accelerator.device)

    def evaluate(step: int) -> None:
        if accelerator.is_main_process:
            accelerator.log(with_shipping_weights(periodic_evaluation), step=step)
        accelerator.wait_for_everyone()

    pushes = []

    def save_pipeline(step: int) -> None:
        if accelerator.is_main_process:
            with_shipping_weights(lambda m: recipe.save_pipeline(m, out))
            if cfg.push_to_hub:
                pushes.append(hub.push_pipeline(cfg, out, step, recipe.pipeline_class,
                                                (recipe.eval_prompts or [None])[0]))
        accelerator.wait_for_everyone()

    total_batch = cfg.train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    accelerator.print(
        f"{len(recipe.dataset)} examples, {updates_per_epoch} updates/epoch, {max_steps} updates "
        f"({num_epochs} epochs), {total_batch} images/update"
    )
    progress = tqdm(total=max_steps, initial=global_step, disable=not accelerator.is_main_process, desc="train")
    model.train()
    running_loss, micro_steps, window_start, window_images = 0.0, 0, time.perf_counter(), 0
    for epoch in range(first_epoch, num_epochs):
        # accelerate's loader passes its epoch counter to our sampler on every __iter__ (and the loader that
        # skip_first_batches makes copies it), so the epoch is set on the loader, not the sampler
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip_batches) if epoch == first_epoch and skip_batches else dataloader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = recipe.loss(model, batch)
                accelerator.backward(loss)
                running_loss, micro_steps = running_loss + loss.detach(), micro_steps + 1
                if accelerator.sync_gradients:
                    step_loss = accelerator.gather(running_loss / micro_steps).mean().item()
                    if not math.isfinite(step_loss):  # same value on every rank: all stop together
                        accelerator.end_training()
                        last = checkpoints.list_checkpoints(out)
                        raise UserError(
                            f"loss became {step_loss} at step {global_step + 1}; stopped before the update. Last good "
                            f"checkpoint: {last[-1] if last else 'none'}. Resume from it with a lower --learning_rate "
                            "(or --mixed_precision bf16 instead of fp16)."
                        )
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_images += len(batch["caption_ids" if "caption_ids" in batch else "pixels"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            if ema is not None:
                ema.step(unwrapped.parameters())
            global_step += 1
            elapsed = time.perf_counter() - window_start
            logs = {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "images_per_s": window_images / max(elapsed, 1e-9), "epoch": epoch}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            accelerator.log(logs, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['images_per_s']:.0f}")
            if global_step % cfg.checkpointing_steps == 0:
                checkpoints.save_checkpoint(accelerator, out, global_step, {"epoch": epoch},
                                            cfg.checkpoints_total_limit)
            if cfg.validation_steps and global_step % cfg.validation_steps == 0:
                validate(global_step)
            if cfg.eval_steps and global_step % cfg.eval_steps == 0:
                evaluate(global_step)
            # the next rate window starts here, so checkpoint, validation and evaluation time do not count as training
            running_loss, micro_steps, window_start, window_images = 0.0, 0, time.perf_counter(), 0
            if global_step >= max_steps:
                break
        if global_step < max_steps:  # an epoch ended and training goes on
            if (epoch + 1) % cfg.save_model_epochs == 0:
                save_pipeline(global_step)
            if cfg.save_images_epochs and (epoch + 1) % cfg.save_images_epochs == 0:
                validate(global_step)
        if global_step >= max_steps:
            break
    progress.close()
    if cfg.validation_steps and global_step % cfg.validation_steps:
        validate(global_step)  # the final grid, unless this step just wrote one
    save_pipeline(global_step)
    for future in pushes:
        future.result()  # uploads ran in the background; wait before the process exits
    accelerator.end_training()
    return out

