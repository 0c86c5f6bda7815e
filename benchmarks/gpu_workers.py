"""What benchmarks/gpu.py runs in its child processes: a training with its peak GPU memory, the sampler's speed; and
the MiniLM stand-in text encoder it trains the text preset with when the MiniLM package is missing.

    python benchmarks/gpu_workers.py train SCRIPT ARGS...
    python benchmarks/gpu_workers.py sample FOLDER [--dtype fp32] [--n 2048] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's difftrain, whatever is installed


def inner(script: str, argv: list[str]) -> int:
    """`gpu_workers.py train SCRIPT ARGS`: SCRIPT's training in this process, then its peak GPU memory (rank 0 writes it)."""
    import runpy

    import torch

    from difftrain.cli import run

    code = run(runpy.run_path(str(ROOT / script))["main"], argv)
    if torch.cuda.is_available() and os.environ.get("RANK", "0") == "0":
        peak = torch.cuda.max_memory_allocated() / 2**30
        Path(os.environ["DIFFTRAIN_PEAK_FILE"]).write_text(json.dumps({"peak_gpu_gib": peak}))
    return code


def minilm_stand_in(folder: Path) -> Path:
    """A random-initialised BertModel of all-MiniLM-L6-v2's shape (384 wide, 6 layers) with a character-level
    WordPiece vocabulary: the same compute, nothing to download."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,'-")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars,
                                                 *[f"##{c}" for c in chars]]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sample_speed(folder: str, dtype: str, n: int, batch: int) -> None:
    """`gpu_workers.py sample FOLDER [--dtype D --n N --batch B]`: images/s of sample.py's default sampler at 20 steps, after one warm-up batch."""
    import torch

    from difftrain.inference_config import SampleConfig
    from difftrain.loading import load_model
    from difftrain.sampling import build_scheduler, sample_images
    from difftrain.schedulers import default_scheduler
    from difftrain.text_config import DIGIT_PROMPTS
    from difftrain.utils import DTYPES, resolve_device

    device = resolve_device("auto")
    model = load_model(folder, device=device, dtype=DTYPES.get(dtype, torch.float32))
    name = default_scheduler(model.scheduler_config)
    scheduler, step_kwargs = build_scheduler(name, model, SampleConfig(scheduler=name, num_inference_steps=20))
    common = dict(steps=20, batch_size=batch, step_kwargs=step_kwargs, prompts=DIGIT_PROMPTS, negative_prompt=None,
                  guidance_scale=1.0, device=device)
    sample_images(model, scheduler, list(range(batch)), **common)  # warm-up
    result = sample_images(model, scheduler, list(range(n)), **common)
    print(json.dumps({"images_per_s": n / result.seconds}))


def main() -> None:
    if sys.argv[1:2] == ["train"]:
        sys.exit(inner(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sample"])
    parser.add_argument("folder")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    sample_speed(args.folder, args.dtype, args.n, args.batch)


if __name__ == "__main__":
    main()
