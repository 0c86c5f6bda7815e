"""The ONE training loop, shared by both scripts: Accelerate for devices, precision and scale; gradient
accumulation with the LR schedule counted in optimizer updates; exact resume. The set-up, the update and the loop
are here; what happens between updates (checkpoints, grids, logs) is maintenance.py's."""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler

from . import checkpoints, config, hub, speed
from .optimizer import learning_rate, make_optimizer, skips_on_device
from .autoguidance import GUIDE_FOLDER
from .data import EpochSampler, collate
from .errors import UserError
from .maintenance import Maintenance, StopRequests, stop_on_bad_loss
from .utils import check_writable, default_mixed_precision
from .weights import ShippingWeights, check_sharding


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
    scheduler: Any = None  # the training noise scheduler: written to the run folder and every checkpoint-N/
    eval_prompts: list[str] | None = None  # text models: image k of an evaluation gets prompt k mod P
    eval_classifier: str | None = None  # with --eval_steps: the classifier folder that reads prompt k as class k
    resolved: dict = field(default_factory=dict)  # options the recipe resolved (unset → value), recorded with the config
    ema_start: torch.nn.Module | None = None  # the network the EMA starts from, when not `model` (--non_ema_revision)
    autoguidance_snapshot: float = 0.0  # keep the shipping weights at this fraction of the run as guide_unet/ (0: no)


def check_output_dir(cfg, resuming: bool) -> None:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; pass a folder.")
    check_writable(out)  # now, not after the data is decoded
    previous = [n for n in ("training_config.yaml", "model_index.json") if (out / n).exists()]
    if previous and not resuming and not cfg.overwrite_output_dir:
        raise UserError(
            f"--output_dir {out} already holds a run ({previous[0]}); continue it with "
            "--resume_from_checkpoint latest, start over with --overwrite_output_dir, or pick another --output_dir."
        )


@dataclass
class Run:
    """A training run once set up: what the loop and its maintenance share."""

    cfg: Any
    accelerator: Accelerator
    recipe: Recipe
    out: Path
    seed: int
    model: torch.nn.Module  # prepared by Accelerate (wrapped for DDP/FSDP/DeepSpeed)
    optimizer: Any
    lr_scheduler: Any
    dataloader: Any
    weights: ShippingWeights
    updates_per_epoch: int
    max_steps: int
    logging_steps: int = 1  # --logging_steps as resolved
    compiled: bool = False  # prepare() compiled the model (--compile): its first update compiles
    global_step: int = 0
    pending_losses: list = field(default_factory=list)  # the micro-batch losses of the update in progress
    # a device-side flag: a non-finite loss was seen, so every update since is skipped on device until maintenance's
    # next check stops the run; None where the optimizer cannot skip on device (each update is checked before it)
    bad_loss_seen: torch.Tensor | None = None

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.updates_per_epoch)

    def batches(self, epoch: int):
        """The epoch's batches; in the epoch a resumed run starts in, without those its checkpoint consumed (every
        update but an epoch's last consumes exactly gradient_accumulation_steps batches)."""
        # accelerate's loader passes its epoch counter to our sampler on every __iter__ (and the loader that
        # skip_first_batches makes copies it), so the epoch is set on the loader, not the sampler
        self.dataloader.set_epoch(epoch)
        done = (self.global_step - epoch * self.updates_per_epoch) * self.cfg.gradient_accumulation_steps
        return self.accelerator.skip_first_batches(self.dataloader, done) if done > 0 else self.dataloader


def train(cfg, build_recipe: Callable[[Any, Accelerator], Recipe]) -> Path:
    """Train with `cfg`; build_recipe(cfg, accelerator) supplies model, data, loss and pipeline writer."""
    run = set_up(cfg, build_recipe)
    maintenance = Maintenance(run)
    run.model.train()
    # Ctrl-C / SIGTERM: acted on at the next update boundary; the progress bar closes however the loop ends, so an
    # error is the last line printed
    with StopRequests() as stop, maintenance.progress:
        for epoch in range(run.global_step // run.updates_per_epoch, run.num_epochs):
            for batch in run.batches(epoch):
                finished = update(run, batch)
                maintenance.count(batch)
                if finished is None:  # a micro-batch inside a gradient-accumulation window
                    continue
                run.global_step += 1
                maintenance.after_update(epoch, *finished)
                if maintenance.stop_requested(stop.name):
                    maintenance.stop(epoch, stop.name or "another process's signal")
                if run.global_step >= run.max_steps:
                    break
            if run.global_step >= run.max_steps:
                break
            maintenance.after_epoch(epoch)
    maintenance.finish()
    return run.out


def update(run: Run, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Forward and backward of one micro-batch; at the last of an update's micro-batches, the optimizer step, the
    LR schedule and the EMA. Returns the update's (loss, gradient norm) when it finished one, else None: device
    tensors, read (a host sync) only at maintenance's checks.

    The NaN/inf stop stays exact without a sync per update: a non-finite loss sets run.bad_loss_seen on device, and
    from that update on the fused optimizer skips every step on device (found_inf), so the weights and the optimizer
    state stay those of the last good update; maintenance reads the losses before anything it writes or logs
    (Maintenance.check) and stops there, naming the first bad update. The EMA only ever averages those good weights."""
    accelerator = run.accelerator
    finished = None
    with accelerator.accumulate(run.model):
        loss = run.recipe.loss(run.model, batch)
        accelerator.backward(loss)
        run.pending_losses.append(loss.detach())
        if accelerator.sync_gradients:
            # the same value on every rank: all skip, and later stop, together
            step_loss = accelerator.gather(torch.stack(run.pending_losses).mean()).mean()
            if run.bad_loss_seen is None:  # no skipping on device: check before the update, a sync per update
                if not math.isfinite(value := step_loss.item()):
                    stop_on_bad_loss(run, value, run.global_step + 1)
            else:  # sticky, so no later update moves the weights past the last good one either
                run.bad_loss_seen |= ~torch.isfinite(step_loss)
                run.optimizer.optimizer.found_inf = run.bad_loss_seen.float()
            finished = step_loss, accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if finished is not None:
        run.lr_scheduler.step()
        run.weights.update()
        run.pending_losses.clear()
    return finished


def set_up(cfg, build_recipe) -> Run:
    """Accelerator, seed, recipe, output folder, loader, optimizer, LR schedule, EMA, and the resumed state."""
    out = Path(cfg.output_dir)
    accelerator, resume, seed, recipe, logging_steps = _start(cfg, build_recipe, out)
    dataloader = torch.utils.data.DataLoader(
        recipe.dataset, batch_size=cfg.train_batch_size, sampler=EpochSampler(len(recipe.dataset), seed),
        collate_fn=collate, num_workers=cfg.dataloader_num_workers,
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed
        # run (which starts its iterator after restoring that RNG) would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
    trained = [p for p in recipe.model.parameters() if p.requires_grad]  # all, or a LoRA run's adapters
    lr = learning_rate(cfg, accelerator.num_processes)
    optimizer = make_optimizer(cfg, trained, lr, accelerator.device.type)
    shipped_class = type(recipe.model)  # before prepare: FSDP2 gives the module it shards a class of its own
    speed.before_prepare(recipe.model, accelerator)
    model, optimizer, dataloader = accelerator.prepare(recipe.model, optimizer, dataloader)
    speed.after_prepare(cfg, recipe.model, accelerator)
    set_seed(seed, device_specific=True)  # different noise on each rank from here on
    # The schedule advances once per optimizer update, on every rank; it is not given to prepare(),
    # which would step it num_processes times per update (diffusers #1957/#3954).
    updates_per_epoch = math.ceil(len(dataloader) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_train_steps or cfg.num_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=max_steps)
    accelerator.register_for_checkpointing(lr_scheduler)
    weights = ShippingWeights(accelerator, model, model_class=shipped_class, use_ema=config.uses_ema(cfg),
                              max_decay=cfg.ema_max_decay, inv_gamma=cfg.ema_inv_gamma, power=cfg.ema_power,
                              offload=cfg.offload_ema, foreach=cfg.foreach_ema, start=recipe.ema_start)
    checkpoints.register_diffusers_format(accelerator, weights)
    if weights.ema is not None and not weights.whole_model:
        accelerator.register_for_checkpointing(weights.ema)  # adapters' EMA: no diffusers format to save it in
    run = Run(cfg, accelerator, recipe, out, seed, model, optimizer, lr_scheduler, dataloader, weights,
              updates_per_epoch, max_steps, logging_steps, compiled=speed.compiles(accelerator))
    if resume is not None:
        accelerator.print(f"Resuming from {resume}")
        accelerator.load_state(str(resume))
        weights.place()
        run.global_step = checkpoints.read_state(resume)["global_step"]
    if skips_on_device(accelerator, optimizer):  # after the resume, which restores the optimizer's fused flag
        run.bad_loss_seen = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    total_batch = cfg.train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    accelerator.print(f"{len(recipe.dataset)} examples, {updates_per_epoch} updates/epoch, {max_steps} updates "
                      f"({run.num_epochs} epochs), {total_batch} images/update")
    return run


def _start(cfg, build_recipe, out: Path) -> tuple:
    """Everything checked before the first write, then the run folder: (accelerator, checkpoint to resume or None,
    seed, recipe, --logging_steps as resolved)."""
    resume = hub.find_resume_checkpoint(cfg)  # a local checkpoint, or one downloaded from the Hub
    # 'latest' with nothing saved yet (a run stopped before its first checkpoint) starts over, as diffusers' scripts
    # do: job schedulers pass it on every start
    starting_over = resume is None and cfg.resume_from_checkpoint == "latest" and (out / "training_config.yaml").exists()
    check_output_dir(cfg, resuming=resume is not None or starting_over)
    if cfg.push_to_hub:
        hub.check_access(cfg)
    accelerator = _accelerator(cfg, out)
    if starting_over:
        accelerator.print(f"note: --resume_from_checkpoint latest: {out} has no checkpoint yet; starting over.")
    seed = cfg.seed
    if seed is None:  # drawn once, shared by every rank, recorded in training_config.yaml
        seed = broadcast_object_list([random.SystemRandom().randrange(2**31)])[0]
    set_seed(seed)  # same initial weights on every rank
    recipe = build_recipe(cfg, accelerator)  # every user error about data/model surfaces here, before any write
    check_sharding(accelerator, recipe.model, use_ema=config.uses_ema(cfg))
    speed.apply(cfg, recipe.model, accelerator)
    if resume is not None:  # before the run folder is touched
        checkpoints.check_resumable(resume, recipe.model, use_ema=config.uses_ema(cfg),
                                    batch=checkpoints.batch_geometry(cfg, accelerator))
    logging_steps = config.logging_steps(cfg, accelerator.device.type)
    if accelerator.is_main_process:
        _write_run_folder(cfg, out, recipe, resolved={"seed": seed, "use_ema": config.uses_ema(cfg),
                                                         "mixed_precision": accelerator.mixed_precision,
                                                         "compile": speed.compiles(accelerator),
                                                         "logging_steps": logging_steps, **recipe.resolved},
                          clear_checkpoints=cfg.overwrite_output_dir and resume is None)
        accelerator.init_trackers(cfg.tracker_project_name, config=_tracker_config(cfg, recipe.resolved))
    return accelerator, resume, seed, recipe, logging_steps


def _accelerator(cfg, out: Path) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision or default_mixed_precision(),
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.logging_dir)),
        dynamo_plugin=speed.dynamo_plugin(cfg),
    )
    if cfg.mixed_precision is None and accelerator.mixed_precision != os.environ.get("ACCELERATE_MIXED_PRECISION", "no"):
        accelerator.print(f"note: bf16 mixed precision, which this {accelerator.device.type.upper()} computes natively "
                          "(--mixed_precision no for fp32).")
    if accelerator.device.type == "cpu" and torch.get_num_threads() * accelerator.num_processes < (os.cpu_count() or 1):
        accelerator.print(
            f"note: training on {torch.get_num_threads()} CPU thread(s) per process of {os.cpu_count()} cores; "
            "`accelerate launch` sets OMP_NUM_THREADS=1 on CPU unless given --num_cpu_threads_per_process N."
        )
    return accelerator


def _write_run_folder(cfg, out: Path, recipe: Recipe, resolved: dict, clear_checkpoints: bool) -> None:
    """What a run folder holds from its start: the config as resolved, the training scheduler (so a checkpoint samples
    before the first pipeline save) and the frozen components."""
    out.mkdir(parents=True, exist_ok=True)
    if clear_checkpoints:
        for stale in checkpoints.list_checkpoints(out):  # else 'latest' could pick another run's state
            shutil.rmtree(stale)
        if (out / GUIDE_FOLDER).is_dir():  # another run's guide would steer this run's samples
            shutil.rmtree(out / GUIDE_FOLDER)
    config.dump(cfg, out / "training_config.yaml", resolved)
    if recipe.scheduler is not None:
        recipe.scheduler.save_pretrained(str(out / "scheduler"))
    if recipe.save_frozen is not None:
        recipe.save_frozen(out)


def _tracker_config(cfg, resolved: dict) -> dict:
    # Trackers (tensorboard hparams) take scalars only.
    values = {**config.to_dict(cfg), **resolved}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}
