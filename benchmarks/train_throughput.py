"""Training throughput and peak memory of a config, per setting, measured in one run (not run by CI).

    python benchmarks/train_throughput.py [--config configs/mnist.yaml] [--steps 40] [--variants fp32 bf16] [--rounds 3]

Each variant trains `--steps` optimizer updates through train_unconditional.py (train_text_to_image.py for a config
with a caption_column, or --script) in a fresh process;
images/s is the median of the per-update rates the trainer logs (first 5 updates dropped as warm-up; a compiled
model's first update, its compilation, is never in them: the trainer logs it as compile_seconds);
peak memory is the process's max RSS (CPU) or torch.cuda.max_memory_allocated (GPU). With --rounds N the variants run
N times interleaved (A B C, A B C, ...), so load from other jobs falls on all of them alike; the table gives the median
round and each round's figure.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (flags, environment)
    "default": ([], {}),  # --mixed_precision unset: bf16 on a CPU that computes it natively, else fp32
    "fp32": (["--mixed_precision", "no"], {}),
    "bf16": (["--mixed_precision", "bf16"], {}),
    "compile": (["--compile"], {}),  # the default precision, torch.compile'd (inductor)
    "channels-last": (["--channels_last"], {}),
    "compile-channels-last": (["--compile", "--channels_last"], {}),
    "grad-ckpt": (["--gradient_checkpointing"], {}),
    "ema": (["--use_ema"], {}),
    # what `accelerate launch` without --cpu gives a CPU-only machine: OMP_NUM_THREADS=1
    "fp32-1thread": ([], {"OMP_NUM_THREADS": "1"}),
}


def run_variant(config: str, steps: int, flags: list[str], env: dict, workdir: Path,
                script: str = "train_unconditional.py") -> dict:
    out = workdir / "out"
    cmd = [sys.executable, str(ROOT / script), "--config", config, "--output_dir", str(out),
           "--max_train_steps", str(steps), "--checkpointing_steps", "100000", "--validation_steps", "100000",
           "--save_model_epochs", "100000", "--report_to", "tensorboard", "--seed", "0", *flags]
    log = workdir / "stderr.txt"
    with open(log, "wb") as err:  # a file, not a pipe: progress bars would fill a pipe and block the child
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **env})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    if status != 0:
        raise SystemExit(f"variant failed: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dir = next(out.rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(event_dir))
    events.Reload()
    rates = [s.value for s in events.Scalars("images_per_s")][5:]
    compiled = [s.value for s in events.Scalars("compile_seconds")] if "compile_seconds" in events.Tags()["scalars"] \
        else []
    cfg = yaml.safe_load((out / "training_config.yaml").read_text())
    return {"images_per_s": statistics.median(rates), "peak_rss_gib": usage.ru_maxrss / 2**20,
            "batch": cfg["train_batch_size"], "compile_seconds": compiled[0] if compiled else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/mnist.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=list(VARIANTS))
    parser.add_argument("--epoch_size", type=int, default=50_000, help="Images per epoch for the minutes column.")
    parser.add_argument("--rounds", type=int, default=1, help="Run the variants this many times, interleaved.")
    parser.add_argument("--script", choices=["train_unconditional.py", "train_text_to_image.py"],
                        help="The training script (unset: train_text_to_image.py for a config with a caption_column).")
    args = parser.parse_args()
    script = args.script or ("train_text_to_image.py" if "caption_column" in yaml.safe_load(Path(args.config).read_text())
                             else "train_unconditional.py")
    runs = {name: [] for name in args.variants}
    for round_ in range(args.rounds):
        for name in args.variants:
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(run_variant(args.config, args.steps, *VARIANTS[name], Path(tmp), script=script))
            r = runs[name][-1]
            compiled = f", compiled in {r['compile_seconds']:.0f} s" if r["compile_seconds"] is not None else ""
            print(f"round {round_ + 1}, {name}: {r['images_per_s']:.1f} images/s{compiled}", flush=True)
    rates = {name: statistics.median(r["images_per_s"] for r in results) for name, results in runs.items()}
    base = rates[args.variants[0]]
    print(f"\n{Path(args.config).name}, {args.steps} updates, {os.cpu_count()} CPU cores, {args.rounds} round(s)\n")
    print("| variant | batch | images/s | vs first | min/epoch | peak RSS (GiB) | compile s | each round |")
    print("|---|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        compile_s = ", ".join(f"{r['compile_seconds']:.0f}" for r in results if r["compile_seconds"] is not None)
        each = ", ".join(f"{r['images_per_s']:.1f}" for r in results)
        print(f"| {name} | {results[0]['batch']} | {rates[name]:.1f} | {rates[name] / base:.2f}x | "
              f"{args.epoch_size / rates[name] / 60:.1f} | {max(r['peak_rss_gib'] for r in results):.2f} | "
              f"{compile_s} | {each} |")


if __name__ == "__main__":
    main()
