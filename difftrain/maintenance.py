"""Everything a run does besides the update itself, once per optimizer update and once per epoch: logging and
throughput, checkpoints, validation grids, evaluation, pipeline saves and Hub pushes (EDM's split of the loop)."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoints, hub
from .errors import UserError
from .utils import rng_untouched


class Maintenance:
    def __init__(self, run):
        self.run, self.cfg, self.accelerator = run, run.cfg, run.accelerator
        self.pushes = []  # Hub uploads running in the background
        self.evaluation = None
        if self.cfg.eval_steps:
            from .periodic_evaluation import PeriodicEvaluation

            self.evaluation = PeriodicEvaluation(self.cfg, run.recipe.generate, run.recipe.eval_prompts,
                                                 run.recipe.eval_classifier, self.accelerator.device)
        self.progress = tqdm(total=run.max_steps, initial=run.global_step, desc="train",
                             disable=not self.accelerator.is_main_process)
        self._new_window()

    def _new_window(self) -> None:
        # the images/s window starts after the maintenance, so checkpoints and grids do not count as training
        self.window_start, self.window_images = time.perf_counter(), 0

    def count(self, batch: dict) -> None:
        """Every micro-batch: its images (every entry of a batch has the batch dimension first)."""
        self.window_images += len(next(iter(batch.values()))) * self.accelerator.num_processes

    def after_update(self, epoch: int, loss: float, grad_norm) -> None:
        cfg, step = self.cfg, self.run.global_step
        self._log(epoch, loss, grad_norm)
        with rng_untouched():  # a run with more checkpoints or grids trains the same weights
            if step % cfg.checkpointing_steps == 0:
                self.checkpoint(epoch)
            if cfg.validation_steps and step % cfg.validation_steps == 0:
                self.validate()
            if cfg.eval_steps and step % cfg.eval_steps == 0:
                self.evaluate()
        self._new_window()

    def checkpoint(self, epoch: int):
        run = self.run
        return checkpoints.save_checkpoint(
            self.accelerator, run.out, run.global_step,
            {"epoch": epoch, "batch": checkpoints.batch_geometry(self.cfg, self.accelerator)},
            self.cfg.checkpoints_total_limit,
            write_extra=lambda folder: run.recipe.scheduler.save_pretrained(str(folder / "scheduler")))

    def stop_requested(self, signal_name: str | None) -> bool:
        """Whether any process was asked to stop (all ranks agree, so they checkpoint together)."""
        if self.accelerator.num_processes == 1:
            return signal_name is not None
        flag = torch.tensor([float(signal_name is not None)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def stop(self, epoch: int, signal_name: str) -> None:
        """A clean stop at an update boundary: a checkpoint of this step (--checkpoint_on_interrupt), one line."""
        run, cfg = self.run, self.cfg
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
        with rng_untouched():
            if (epoch + 1) % self.cfg.save_model_epochs == 0:
                self.save_pipeline()
            if self.cfg.save_images_epochs and (epoch + 1) % self.cfg.save_images_epochs == 0:
                self.validate()

    def finish(self) -> None:
        self.progress.close()
        if self.cfg.validation_steps and self.run.global_step % self.cfg.validation_steps:
            self.validate()  # the final grid, unless this step just wrote one
        self.save_pipeline()
        for future in self.pushes:
            future.result()  # uploads ran in the background; wait before the process exits
        self.accelerator.end_training()

    def _log(self, epoch: int, loss: float, grad_norm) -> None:
        run = self.run
        elapsed = time.perf_counter() - self.window_start
        logs = {"loss": loss, "lr": run.lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                "images_per_s": self.window_images / max(elapsed, 1e-9), "epoch": epoch}
        if run.weights.decay is not None:
            logs["ema_decay"] = run.weights.decay
        self.accelerator.log(logs, step=run.global_step)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['images_per_s']:.0f}")

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
