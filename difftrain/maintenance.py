"""Everything a run does besides the update itself, once per optimizer update and once per epoch: logging and
throughput, checkpoints, validation grids, evaluation, pipeline saves and Hub pushes (EDM's split of the loop)."""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoints, hub
from .autoguidance import save_guide, snapshot_step
from .errors import UserError
from .utils import rng_untouched


class Maintenance:
    def __init__(self, run):
        self.run, self.cfg, self.accelerator = run, run.cfg, run.accelerator
        self.pushes = []  # Hub uploads running in the background
        self.checkpoint_uploads = None  # --hub_push_checkpoints: the upload queue, made at the first checkpoint
        self.evaluation = None
        if self.cfg.eval_steps:
            from .periodic_evaluation import PeriodicEvaluation

            self.evaluation = PeriodicEvaluation(self.cfg, run.recipe.generate, run.recipe.eval_prompts,
                                                 run.recipe.eval_classifier, self.accelerator.device)
        self.guide_step = snapshot_step(run.recipe.autoguidance_snapshot, run.max_steps)
        self.progress = tqdm(total=run.max_steps, initial=run.global_step, desc="train",
                             disable=not self.accelerator.is_main_process)
        self.unchecked = []  # the losses of the updates since the last check: device tensors, not read yet
        self.window_losses = []  # the checked losses of the updates since the last log
        self.grad_norm = None  # the last update's, a device tensor
        self.checked_now = False  # whether the last update was a check (the host has waited for the device)
        # a compiled model (--compile) compiles in this process's first update: timed apart, left out of images/s
        self.compiling = run.compiled
        self._new_window()

    def _new_window(self) -> None:
        self.window_images, self.window_seconds, self.clock = 0, 0.0, time.perf_counter()

    @contextmanager
    def _clock_paused(self):
        # checkpoints, grids and evaluations are not training: images/s leaves them out
        self.window_seconds += time.perf_counter() - self.clock
        try:
            yield
        finally:
            self.clock = time.perf_counter()

    def count(self, batch: dict) -> None:
        """Every micro-batch: its images (every entry of a batch has the batch dimension first)."""
        self.window_images += len(next(iter(batch.values()))) * self.accelerator.num_processes

    def after_update(self, epoch: int, loss: torch.Tensor, grad_norm) -> None:
        """After each optimizer update: its loss and gradient norm stay on the device; every --logging_steps, and
        before a checkpoint, grid or evaluation, they are checked (and logged)."""
        cfg, run, step = self.cfg, self.run, self.run.global_step
        self.unchecked.append(loss)
        self.grad_norm = grad_norm
        self.progress.update(1)
        if self.compiling:
            self._time_compilation()
        log_now = step % run.logging_steps == 0 or step == run.max_steps
        checkpoint_now = step % cfg.checkpointing_steps == 0
        grid_now = bool(cfg.validation_steps) and step % cfg.validation_steps == 0
        eval_now = bool(cfg.eval_steps) and step % cfg.eval_steps == 0
        guide_now = step == self.guide_step
        self.checked_now = log_now or checkpoint_now or grid_now or eval_now or guide_now
        if self.checked_now:
            self.check()
        if log_now:
            self._log(epoch)
        if checkpoint_now or grid_now or eval_now or guide_now:
            with self._clock_paused(), rng_untouched():  # a run with more checkpoints or grids trains the same weights
                if guide_now:  # before this step's grid, which it then guides
                    self.keep_guide()
                if checkpoint_now:
                    self.checkpoint(epoch)
                if grid_now:
                    self.validate()
                if eval_now:
                    self.evaluate()

    def _time_compilation(self) -> None:
        """After the first update of a compiled model: its time (compilation, nearly all of it) is logged as
        compile_seconds, and the images/s window starts over, so the first images/s figure is training only."""
        self.compiling = False
        self.check()  # a sync: the device has finished the first update before the window starts
        seconds = self.window_seconds + time.perf_counter() - self.clock
        self.accelerator.log({"compile_seconds": seconds}, step=self.run.global_step)
        if self.accelerator.is_main_process:
            self.progress.write(f"compiled in the first update: {seconds:.0f} s (compile_seconds; not in images/s)")
        self._new_window()

    def check(self) -> None:
        """A sync point: read the losses of the updates since the last check (one device-to-host copy) and stop at
        the first non-finite one. It comes before every log, checkpoint, grid, evaluation, pipeline save and stop, so
        none of them sees a bad update; meanwhile the optimizer skipped it, and every update after it, on device
        (trainer.update), so the weights are still those of the update before it."""
        if not self.unchecked:
            return
        losses = torch.stack(self.unchecked).tolist()
        self.unchecked.clear()
        first_step = self.run.global_step - len(losses) + 1
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                stop_on_bad_loss(self.run, loss, first_step + offset)
        self.window_losses += losses

    def checkpoint(self, epoch: int):
        run = self.run
        saved = checkpoints.save_checkpoint(
            self.accelerator, run.out, run.global_step,
            {"epoch": epoch, "batch": checkpoints.batch_geometry(self.cfg, self.accelerator)},
            self.cfg.checkpoints_total_limit,
            write_extra=lambda folder: run.recipe.scheduler.save_pretrained(str(folder / "scheduler")))
        if self.cfg.hub_push_checkpoints and self.accelerator.is_main_process:
            self.pushes.append(self._checkpoint_uploads().push(saved))  # finish waits for it with the pipeline's
        return saved

    def _checkpoint_uploads(self):
        """The run's one upload queue, made at its first checkpoint, so uploads and Hub rotations happen in order."""
        if self.checkpoint_uploads is None:
            self.checkpoint_uploads = hub.CheckpointUploads(self.cfg, self.run.out)
        return self.checkpoint_uploads

    def stop_requested(self, signal_name: str | None) -> bool:
        """Whether any process was asked to stop (all ranks agree, so they checkpoint together). With several
        processes, agreeing is a collective read, so it is asked at the checks only (every --logging_steps)."""
        if self.accelerator.num_processes == 1:
            return signal_name is not None
        if not self.checked_now:
            return False
        flag = torch.tensor([float(signal_name is not None)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def stop(self, epoch: int, signal_name: str) -> None:
        """A clean stop at an update boundary: a checkpoint of this step (--checkpoint_on_interrupt), one line."""
        run, cfg = self.run, self.cfg
        self.check()
        saved = None
        if cfg.checkpoint_on_interrupt:  # this step's, unless after_update just wrote it
            just_written = run.global_step % cfg.checkpointing_steps == 0
            saved = run.out / f"checkpoint-{run.global_step}" if just_written else self.checkpoint(epoch)
        self.progress.close()
        self.accelerator.end_training()
        last = saved or (checkpoints.list_checkpoints(run.out) or [None])[-1]
        raise UserError(f"stopped by {signal_name} at step {run.global_step} of {run.max_steps}; "
                        + (f"{last} holds it; continue with --resume_from_checkpoint latest." if last else
                           "no checkpoint yet (--checkpoint_on_interrupt is off): --resume_from_checkpoint latest "
                           "starts over."))

    def after_epoch(self, epoch: int) -> None:
        """At the end of an epoch that training goes on after."""
        self.check()
        with self._clock_paused(), rng_untouched():
            if (epoch + 1) % self.cfg.save_model_epochs == 0:
                self.save_pipeline()
            if self.cfg.save_images_epochs and (epoch + 1) % self.cfg.save_images_epochs == 0:
                self.validate()

    def finish(self) -> None:
        self.check()
        self.progress.close()
        if self.cfg.validation_steps and self.run.global_step % self.cfg.validation_steps:
            self.validate()  # the final grid, unless this step just wrote one
        self.save_pipeline()
        for future in self.pushes:
            future.result()  # uploads ran in the background; wait before the process exits
        self.accelerator.end_training()

    def _log(self, epoch: int) -> None:
        """Right after a check: the loss averaged over the updates since the last log (as transformers' Trainer
        does), this update's LR and gradient norm, and images/s over the window."""
        run = self.run
        elapsed = self.window_seconds + time.perf_counter() - self.clock
        loss = sum(self.window_losses) / len(self.window_losses)
        logs = {"loss": loss, "lr": run.lr_scheduler.get_last_lr()[0], "grad_norm": float(self.grad_norm),
                "epoch": epoch}
        if self.window_images:  # none in a window of the compiling update only (compile_seconds has that one)
            logs["images_per_s"] = self.window_images / max(elapsed, 1e-9)
        if run.weights.decay is not None:
            logs["ema_decay"] = run.weights.decay
        self.accelerator.log(logs, step=run.global_step)
        shown = {"img_s": f"{logs['images_per_s']:.0f}"} if "images_per_s" in logs else {}
        self.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['lr']:.2e}", **shown)
        self.window_losses.clear()
        self._new_window()

    def validate(self) -> None:
        """samples/step-N.png from the shipping weights, and the trackers' image log. Every rank calls this (and
        evaluate, save_pipeline): sharded weights are gathered by all; the main process samples and writes."""
        run = self.run
        with run.weights.whole() as model:
            grid = run.recipe.sample_grid(model) if model is not None else None
        if grid is not None:
            (run.out / "samples").mkdir(exist_ok=True)
            grid.save(run.out / "samples" / f"step-{run.global_step}.png")
            log_grid(self.accelerator, grid, run.global_step)

    def keep_guide(self) -> None:
        """guide_unet/: the shipping weights as they are now, what autoguidance later steers away from."""
        with self.run.weights.whole() as model:  # every rank: sharded weights are gathered by all
            if model is not None:
                save_guide(model, self.run.out)
        self.accelerator.wait_for_everyone()

    def evaluate(self) -> None:
        with self.run.weights.whole() as model:
            if model is not None:
                self.accelerator.log(self.evaluation(model), step=self.run.global_step)
        self.accelerator.wait_for_everyone()

    def save_pipeline(self) -> None:
        run = self.run
        with run.weights.whole() as model:
            if model is not None:
                run.recipe.save_pipeline(model, run.out)
        if self.accelerator.is_main_process and self.cfg.push_to_hub:
            self.pushes.append(hub.push_pipeline(self.cfg, run.out, run.global_step, run.recipe.pipeline_class,
                                                 (run.recipe.eval_prompts or [None])[0]))
        self.accelerator.wait_for_everyone()


def stop_on_bad_loss(run, loss: float, step: int) -> None:
    """The one-line stop on a NaN/inf loss at update `step`, which never reached the weights."""
    run.accelerator.end_training()
    last = checkpoints.list_checkpoints(run.out)
    raise UserError(
        f"loss became {loss} at step {step}; stopped before the update. Last good checkpoint: "
        f"{last[-1] if last else 'none'}. Resume from it with a lower --learning_rate (or --mixed_precision bf16 "
        "instead of fp16)."
    )


class StopRequests:
    """SIGINT (Ctrl-C) and SIGTERM (preemption) while training: noted, and acted on at the next update boundary, so
    the checkpoint written then is a consistent one. A second Ctrl-C stops at once."""

    def __init__(self):
        self.name, self._previous = None, {}

    def _note(self, signum, frame):
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def log_grid(accelerator, grid, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(grid)]}, step=step)
