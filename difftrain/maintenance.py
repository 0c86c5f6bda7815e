"""Everything a run does besides the update itself, once per optimizer update and once per epoch: logging and
throughput, checkpoints, validation grids, evaluation, pipeline saves and Hub pushes (EDM's split of the loop)."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from . import checkpoints, hub


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
        run, cfg, step = self.run, self.cfg, self.run.global_step
        self._log(epoch, loss, grad_norm)
        if step % cfg.checkpointing_steps == 0:
            checkpoints.save_checkpoint(self.accelerator, run.out, step, {"epoch": epoch}, cfg.checkpoints_total_limit,
                                        write_extra=lambda folder: run.recipe.scheduler.save_pretrained(
                                            str(folder / "scheduler")))
        if cfg.validation_steps and step % cfg.validation_steps == 0:
            self.validate()
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            self.evaluate()
        self._new_window()

    def after_epoch(self, epoch: int) -> None:
        """At the end of an epoch that training goes on after."""
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
        """samples/step-N.png from the shipping weights, and the trackers' image log."""
        run = self.run
        if self.accelerator.is_main_process:
            with run.weights.swapped_in() as model:
                grid = run.recipe.sample_grid(model)
            (run.out / "samples").mkdir(exist_ok=True)
            grid.save(run.out / "samples" / f"step-{run.global_step}.png")
            log_grid(self.accelerator, grid, run.global_step)

    def evaluate(self) -> None:
        if self.accelerator.is_main_process:
            with self.run.weights.swapped_in() as model:
                self.accelerator.log(self.evaluation(model), step=self.run.global_step)
        self.accelerator.wait_for_everyone()

    def save_pipeline(self) -> None:
        run = self.run
        if self.accelerator.is_main_process:
            with run.weights.swapped_in() as model:
                run.recipe.save_pipeline(model, run.out)
            if self.cfg.push_to_hub:
                self.pushes.append(hub.push_pipeline(self.cfg, run.out, run.global_step, run.recipe.pipeline_class,
                                                     (run.recipe.eval_prompts or [None])[0]))
        self.accelerator.wait_for_everyone()


def log_grid(accelerator, grid, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(grid)]}, step=step)
