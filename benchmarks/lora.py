"""LoRA against a full fine-tune, on a Stable-Diffusion-1.5-shaped UNet (random init: shapes decide memory) and on the
tests' tiny UNet: trainable parameters, checkpoint size, peak memory and seconds per step, in one run (not run by CI).

    python benchmarks/lora.py [--unets sd15 tiny] [--latent 32] [--steps 3] [--rank 4]

Each (UNet, method) runs in a fresh process: AdamW over what trains (all weights, or the adapters that
difftrain.lora adds, as train_text_to_image.py --rank does), `--steps` updates of batch 1 on random latents and
77 random text states (the first update is warm-up, not timed). The checkpoint is what a checkpoint-N/ holds:
the UNet (or pytorch_lora_weights.safetensors) and the optimizer state. Peak memory: the process's max RSS on CPU,
torch.cuda.max_memory_allocated on a GPU.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNETS = {
    # Stable Diffusion 1.5's UNet config (860M parameters), at sample_size 64
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
    # the tests' tiny Stable-Diffusion-format UNet (tests/conftest.py)
    "tiny": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
                 norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
}


def measure(unet_name: str, method: str, latent: int, steps: int, rank: int) -> dict:
    """One (UNet, method) in this process."""
    import torch
    from diffusers import UNet2DConditionModel

    from difftrain import lora

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = UNETS[unet_name]
    unet = UNet2DConditionModel(**config)
    if method == "lora":
        lora.add_adapter(unet, rank=rank, alpha=None, dropout=0.0, target_modules=lora.SD_TARGET_MODULES)
    unet.to(device).train()
    trained = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    size = latent if unet_name == "sd15" else config["sample_size"]
    x = torch.randn(1, 4, size, size, device=device)
    context = torch.randn(1, 77, config["cross_attention_dim"], device=device)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = unet(x, torch.tensor([500], device=device), encoder_hidden_states=context).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        if method == "lora":
            lora.save(unet, Path(folder))
        else:
            unet.save_pretrained(folder)
        torch.save(optimizer.state_dict(), Path(folder) / "optimizer.bin")
        checkpoint = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"unet": unet_name, "method": method, "trainable": sum(p.numel() for p in trained),
            "total": sum(p.numel() for p in unet.parameters()), "checkpoint_bytes": checkpoint, "peak_bytes": peak,
            "seconds_per_step": sum(times) / max(len(times), 1), "device": device, "latent": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unets", nargs="+", default=["sd15", "tiny"], choices=list(UNETS))
    parser.add_argument("--latent", type=int, default=32, help="latent size of the sd15 runs (64 = 512 px images)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: measure one in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.latent, args.steps, args.rank)))
        return
    rows = []
    for unet_name in args.unets:
        for method in ("full", "lora"):
            out = subprocess.run([sys.executable, __file__, "--one", unet_name, method, "--latent", str(args.latent),
                                  "--steps", str(args.steps), "--rank", str(args.rank)],
                                 capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nLoRA (rank {args.rank}, {' '.join(__import__('difftrain.lora').lora.SD_TARGET_MODULES)}) vs full "
          f"fine-tune, batch 1, {args.steps - 1} timed updates, {rows[0]['device']} ({os.cpu_count()} cores)\n")
    print("| UNet | method | trainable params | checkpoint | peak memory | s/step | LoRA/full: checkpoint, memory, time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        full = next(r for r in rows if r["unet"] == row["unet"] and r["method"] == "full")
        ratio = "" if row["method"] == "full" else (
            f"{row['checkpoint_bytes'] / full['checkpoint_bytes']:.4f}x, {row['peak_bytes'] / full['peak_bytes']:.2f}x, "
            f"{row['seconds_per_step'] / full['seconds_per_step']:.2f}x")
        print(f"| {row['unet']} ({row['total'] / 1e6:.1f}M, latent {row['latent']}) | {row['method']} | "
              f"{row['trainable']:,} | {row['checkpoint_bytes'] / 2**20:.2f} MiB | {row['peak_bytes'] / 2**30:.2f} GiB | "
              f"{row['seconds_per_step']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
