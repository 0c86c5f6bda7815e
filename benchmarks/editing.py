"""img2img and inpainting, looked at: a strength sweep sheet and an inpainting sheet from a trained model, through
sample.py's own code (not run by CI).

    python benchmarks/editing.py --model ddpm-mnist-classes --class_label 8 [--test_index 0] [--seeds 4]

Sheet 1 (img2img-strength-sweep.png): a real MNIST test digit, then one row per --strength (0 … 1), --seeds images
each. Sheet 2 (inpainting.png): the digit, the mask (its top half, white = repaint), and the repainted images
(for a class model, conditioned on --class_label). Both under --results_dir.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain.inference_config import SampleConfig
from difftrain.references import reference_images
from difftrain.pipelines import comparison_sheet
from difftrain.sampling import sample

STRENGTHS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def run(args, work: Path, name: str, **edit) -> torch.Tensor:
    """uint8 NCHW: --seeds images of sample.py with these edit flags."""
    cfg = SampleConfig(model=args.model, num_images=args.seeds, output_dir=str(work / name), seed=args.seed,
                       class_label=[args.class_label] if args.class_label else [], **edit)
    out = sample(cfg)
    images = [np.asarray(Image.open(out / f"{k:05d}.png")) for k in range(args.seeds)]
    return torch.from_numpy(np.stack([i[:, :, None] if i.ndim == 2 else i for i in images])).permute(0, 3, 1, 2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--class_label", default=None, help="For a class model: the class to draw (default: all, in turn).")
    p.add_argument("--test_index", type=int, default=0, help="Which MNIST test digit to edit.")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results_dir", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    digit = np.asarray(reference_images("mnist", "test", 28, num_samples=args.test_index + 1)[args.test_index]["pixels"])
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        Image.fromarray(digit[0]).save(work / "digit.png")
        mask = np.zeros((28, 28), np.uint8)
        mask[:14] = 255  # repaint the top half
        Image.fromarray(mask).save(work / "mask.png")
        shown = torch.from_numpy(digit)[None]
        rows = [("init image (MNIST test)", shown)]
        for s in STRENGTHS:
            rows.append((f"strength {s}", run(args, work, f"s{s}", init_image=str(work / "digit.png"), strength=s)))
        comparison_sheet(rows).save(results / "img2img-strength-sweep.png")
        repainted = run(args, work, "inpaint", init_image=str(work / "digit.png"), mask_image=str(work / "mask.png"))
        label = f" as class {args.class_label}" if args.class_label else ""
        comparison_sheet([("init image", shown), ("mask (white = repaint)", torch.from_numpy(mask)[None, None]),
                          (f"repainted{label}", repainted)]).save(results / "inpainting.png")
    print(f"→ {results / 'img2img-strength-sweep.png'}, {results / 'inpainting.png'}")


if __name__ == "__main__":
    main()
