"""What one GPU does with difftrain, in one markdown table (benchmarks/gpu.sh runs this; not run by CI).

    python benchmarks/gpu.py [--only SECTION ...] [--out DIR]    # on the GPU machine: bf16 throughout
    python benchmarks/gpu.py --smoke                             # any machine: tiny settings, the first rows only
    python benchmarks/gpu.py --dry-run                           # the rows and commands it would run, nothing else

Sections, in order: correctness (each script ~30 s in bf16: trains, saves, samples), training (images/s and peak
GPU memory of the training step: the default, GPU and text-GPU presets at batch 64 and 256, --compile and
--channels_last on/off; a switch a checkout's trainer lacks gives a TODO row), sampler (images/s at 20 steps), fid
(seconds for FID over 10k samples), fsdp (configs/accelerate/fsdp.yaml on one GPU: world size 1 still shards through
the real code path), deepspeed (deepspeed_zero2.yaml, if deepspeed imports). The table goes to DIR/gpu.md (DIR: --out,
else $OUT, else benchmarks/results/). Training images/s is the median of the rates the trainer logs after the first
10 updates (the trainer leaves the compiling first update out of images/s in any case and logs its time as
compile_seconds, shown in the row's setting); peak memory is torch.cuda.max_memory_allocated of the training process.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's difftrain, whatever is installed
SECTIONS = ["correctness", "training", "sampler", "fid", "fsdp", "deepspeed"]
PRESETS = {"default": "configs/mnist.yaml", "gpu": "configs/mnist_gpu.yaml", "text-gpu": "configs/mnist_text_gpu.yaml"}
SWITCHES = ["--compile", "--channels_last"]  # the trainer's flags; TODO rows for a trainer without them
WORKERS = Path(__file__).with_name("gpu_workers.py")  # what runs in the child processes
NEVER = ["--checkpointing_steps", "1000000", "--validation_steps", "1000000", "--save_model_epochs", "1000000"]


class Bench:
    def __init__(self, args):
        self.args, self.rows, self.smoke = args, [], args.smoke
        self.work = Path(args.work or (Path(os.environ.get("TMPDIR", "/tmp")) / "difftrain-gpu-bench"))
        self.steps = 8 if self.smoke else 60  # per speed variant
        self.encoder = None  # --text_encoder_name_or_path of a stand-in when the MiniLM package is missing
        self.models = {}  # correctness run -> its folder, for the FID row
        self.samplable = {}  # preset -> a folder its speed runs trained, for the sampler rows

    def row(self, section, what, setting="", images_per_s=None, peak_gib=None, seconds=None, status="ok"):
        if self.args.dry_run and status == "ok":
            status = "dry run"
        self.rows.append((section, what, setting, images_per_s, peak_gib, seconds, status))
        print(f"[gpu.py] {section} | {what} | {setting} | {status}", flush=True)

    def run(self, name: str, cmd: list, timeout: int = 600) -> tuple[int, float, str]:
        """A command of ours, logged to WORK/NAME.log: (exit code, seconds, its last line)."""
        cmd = [str(c) for c in cmd]
        if self.args.dry_run:
            print("[dry-run]", " ".join(cmd))
            return 0, 0.0, ""
        log = self.work / f"{name}.log"
        start = time.perf_counter()
        with open(log, "wb") as out:  # a file, not a pipe: progress bars would fill a pipe and block the child
            try:
                code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = 124
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        return code, time.perf_counter() - start, (lines[-1][-160:] if lines else "")

    def train(self, name, script, flags, launcher=None) -> dict:
        """One training run through `gpu_workers.py train`: exit status, seconds, logged images/s and loss, peak memory."""
        out, peak_file = self.work / name, self.work / f"{name}.peak.json"
        peak_file.unlink(missing_ok=True)
        os.environ["DIFFTRAIN_PEAK_FILE"] = str(peak_file)
        cmd = [*(launcher or [sys.executable]), WORKERS, "train", script, *flags, "--output_dir", out,
               "--report_to", "tensorboard", "--seed", 0, *([] if self.smoke else ["--mixed_precision", "bf16"])]
        code, seconds, last = self.run(name, cmd)
        result = {"ok": code == 0, "seconds": seconds, "last": last, "out": out, "rate": None, "loss": None,
                  "compile_seconds": None,
                  "peak": json.loads(peak_file.read_text())["peak_gpu_gib"] if peak_file.is_file() else None}
        if code == 0 and not self.args.dry_run:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent))
            events.Reload()
            logged = events.Scalars("images_per_s")  # every update, or every --logging_steps where that exists
            result["rate"] = statistics.median([s.value for s in logged if s.step > 10] or [s.value for s in logged])
            result["loss"] = events.Scalars("loss")[-1].value
            if "compile_seconds" in events.Tags()["scalars"]:
                result["compile_seconds"] = events.Scalars("compile_seconds")[0].value
        return result

    def text_flags(self) -> list:
        from benchmarks.gpu_workers import minilm_stand_in

        try:
            from difftrain.text import default_text_encoder_path

            default_text_encoder_path()
            return []
        except Exception:  # the 91 MB MiniLM package does not travel: a random-initialised one of its shape does
            if self.encoder is None and not self.args.dry_run:
                self.encoder = minilm_stand_in(self.work / "minilm-stand-in")
            return ["--text_encoder_name_or_path", self.encoder or self.work / "minilm-stand-in"]

    # ------------------------------------------------------------------------------------------------- sections
    def correctness(self):
        steps = 4 if self.smoke else 400
        uncond = ["--config", "configs/tiny.yaml" if self.smoke else PRESETS["default"], "--max_train_steps", steps,
                  "--checkpointing_steps", steps, "--validation_steps", steps]
        text = ["--config", "configs/tiny.yaml" if self.smoke else "configs/mnist_text.yaml", "--max_train_steps",
                steps, "--checkpointing_steps", steps, "--validation_steps", steps, *self.text_flags()]
        if self.smoke:
            text += ["--unet", '{"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, '
                     '"attention_head_dim": 2, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], '
                     '"up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}']
        runs = [("unconditional", "train_unconditional.py", uncond), ("text", "train_text_to_image.py", text)]
        if not self.smoke:  # LoRA on the text run just made: a text-to-image run of ours is a base it takes
            runs.append(("lora", "train_text_to_image_lora.py", [
                "--pretrained_model_name_or_path", self.work / "text", "--dataset_name", "mnist", "--caption_column",
                "text", "--resolution", 28, "--max_train_steps", steps // 2, "--checkpointing_steps", steps // 2,
                "--validation_steps", steps // 2]))
        for name, script, flags in runs:
            r = self.train(name, script, flags)
            finite = r["loss"] is not None and math.isfinite(r["loss"])
            failed = r["last"] if not r["ok"] else f"loss {r['loss']}"
            status = "ok" if r["ok"] and (finite or self.args.dry_run) else f"FAILED: {failed}"
            updates = flags[flags.index("--max_train_steps") + 1]
            self.row("correctness", script, f"{updates} updates, final loss {r['loss'] or 0:.4f}", r["rate"], r["peak"],
                     r["seconds"], status)
            if r["ok"]:
                self.models[name] = r["out"]
                prompt = ["--prompt", "a handwritten digit three"] if name != "unconditional" else []
                code, seconds, last = self.run(f"sample-{name}", [
                    sys.executable, "sample.py", "--model", r["out"], "--num_images", 8, "--num_inference_steps", 10,
                    *prompt, "--output_dir", self.work / f"samples-{name}"])
                grid = self.work / f"samples-{name}" / "grid.png"
                ok = code == 0 and (grid.is_file() or self.args.dry_run)
                self.row("correctness", f"sample.py on the {name} run", "8 images, 10 steps", seconds=seconds,
                         status="ok" if ok else f"FAILED: {last}")

    def training(self):
        have = script_flags("train_unconditional.py")
        presets = {"tiny": "configs/tiny.yaml"} if self.smoke else PRESETS
        for (preset, config), batch, on in itertools.product(presets.items(), [8] if self.smoke else [64, 256],
                                                             itertools.product((False, True), repeat=2)):
            wanted = [flag for flag, wanted in zip(SWITCHES, on) if wanted]
            setting = f"batch {batch}, " + ", ".join(f"{f[2:]} {'on' if w else 'off'}" for f, w in zip(SWITCHES, on))
            missing = [f for f in wanted if f not in have]
            if missing:
                self.row("training", preset, setting, status=f"TODO: the trainer has no {' or '.join(missing)} yet")
                continue
            script = "train_text_to_image.py" if preset.startswith("text") else "train_unconditional.py"
            flags = ["--config", config, "--max_train_steps", self.steps, "--train_batch_size", batch, *NEVER, *wanted,
                     *(self.text_flags() if preset.startswith("text") else [])]
            r = self.train(f"train-{preset}-b{batch}{''.join(wanted)}", script, flags)
            if r["compile_seconds"] is not None:
                setting += f" (compiled in {r['compile_seconds']:.0f} s)"
            self.row("training", preset, setting, r["rate"], r["peak"], r["seconds"],
                     "ok" if r["ok"] else f"FAILED: {r['last']}")
            if r["ok"] and not wanted:
                self.samplable.setdefault(preset, r["out"])

    def sampler(self):
        for name, folder in self.samplable.items():
            for dtype in ("fp32", "bf16"):
                n, batch = (16, 8) if self.smoke else (2048, 256)
                code, seconds, last = self.run(f"sampler-{name}-{dtype}", [
                    sys.executable, WORKERS, "sample", folder, "--dtype", dtype, "--n", n, "--batch", batch])
                rate = json.loads(last)["images_per_s"] if code == 0 and not self.args.dry_run else None
                self.row("sampler", name, f"20 steps, {dtype} weights, batch {batch}", rate, seconds=seconds,
                         status="ok" if code == 0 else f"FAILED: {last}")

    def fid(self):
        from difftrain import metrics

        try:
            metrics.inception_weights_path()
        except Exception as e:
            self.row("fid", "FID over 10k samples", status=f"not run: {e}")
            return
        model = self.models.get("unconditional") or self.samplable.get("default")
        n = 200 if self.smoke else 10000
        code, seconds, last = self.run("fid", [sys.executable, "evaluate.py", "--model", model, "--num_samples", n,
                                               "--num_inference_steps", 20, "--batch_size", 500,
                                               "--output_dir", self.work / "fid"], timeout=1800)
        self.row("fid", f"FID over {n} samples", "evaluate.py, 20 steps, batch 500, reference stats included",
                 seconds=seconds, status="ok" if code == 0 else f"FAILED: {last}")

    def sharded(self, config: str, label: str):
        steps = self.steps
        flags = ["--config", "configs/tiny.yaml" if self.smoke else PRESETS["gpu"], "--max_train_steps", steps,
                 "--checkpointing_steps", steps, "--validation_steps", steps,
                 "--train_batch_size", 8 if self.smoke else 256]
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", 1]
        r = self.train(label, "train_unconditional.py", flags, launcher=launcher)
        status = "ok" if r["ok"] else f"FAILED: {r['last']}"
        if r["ok"] and not self.args.dry_run:  # the pipeline ships the EMA checkpointed by the same gather
            import torch
            from safetensors.torch import load_file

            shipped = load_file(r["out"] / "unet" / "diffusion_pytorch_model.safetensors")
            ema = load_file(r["out"] / f"checkpoint-{steps}" / "unet_ema" / "diffusion_pytorch_model.safetensors")
            status = "ok" if all(torch.equal(shipped[k], ema[k]) for k in ema) else "FAILED: pipeline != unet_ema"
        self.row(label, "gpu preset, 1 process", f"batch {flags[-1]}, checkpoint + grid at the end", r["rate"],
                 r["peak"], r["seconds"], status)

    def fsdp(self):
        self.sharded("configs/accelerate/fsdp.yaml", "fsdp")

    def deepspeed(self):
        try:
            importlib.import_module("deepspeed")
        except Exception as e:
            self.row("deepspeed", "ZeRO-2", status=f"not run: deepspeed does not import ({type(e).__name__}); carry "
                     "its wheel: pip wheel --no-deps deepspeed hjson ninja py-cpuinfo msgpack einops -w .whl")
            return
        self.sharded("configs/accelerate/deepspeed_zero2.yaml", "deepspeed")

    def table(self) -> str:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU)"
        what = "SMOKE: tiny.yaml in fp32, not a measurement" if self.smoke else "bf16 mixed precision"
        lines = [f"# difftrain on {device}", "", f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}", "",
                 "| section | what | setting | images/s | peak GPU GiB | seconds | status |",
                 "|---|---|---|---|---|---|---|"]
        fmt = lambda v, p: "" if v is None else f"{v:.{p}f}"  # noqa: E731
        for section, what, setting, rate, peak, seconds, status in self.rows:
            lines.append(f"| {section} | {what} | {setting} | {fmt(rate, 1)} | {fmt(peak, 2)} | {fmt(seconds, 0)} | "
                         f"{status.replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def script_flags(script: str) -> set[str]:
    help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                               cwd=ROOT).stdout
    return set(re.findall(r"--[a-z0-9_]+", help_text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    parser.add_argument("--smoke", action="store_true", help="Tiny settings, first rows only (any machine).")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="Print the commands; run none.")
    parser.add_argument("--out", help="Folder for gpu.md (default: $OUT, else benchmarks/results).")
    parser.add_argument("--work", help="Scratch folder for the runs (default: $TMPDIR/difftrain-gpu-bench).")
    args = parser.parse_args()
    bench = Bench(args)
    bench.work.mkdir(parents=True, exist_ok=True)
    sections = ["correctness", "training", "sampler"] if args.smoke else args.only
    for section in sections:
        getattr(bench, section)()
    out = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu-smoke.md" if args.smoke else "gpu.md"
    (out / name).write_text(bench.table())
    print(bench.table())
    print(f"[gpu.py] wrote {out / name}")


if __name__ == "__main__":
    main()
