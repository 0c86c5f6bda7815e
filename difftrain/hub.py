"""Push a trained pipeline folder to the Hugging Face Hub, with a model card, in the background."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi

from .classes import CLASS_GUIDANCE
from .config import grid_guidance, uses_ema
from .errors import UserError
from .pipeline_code import LOAD_ARGS
from .utils import first_line

# Never uploaded: resumable state, trackers' files, half-written checkpoints, local samples other than the card's.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", ".checkpoint-*", ".checkpoint-*/**", "logs/**", "*.partial*"]


def model_card(cfg, *, repo_id: str, global_step: int, pipeline_class: str, grid: str | None,
               prompt: str | None = None, prediction_type: str | None = None) -> str:
    """The card of a pipeline folder; prediction_type: its saved scheduler's (default: --prediction_type)."""
    from huggingface_hub import ModelCard, ModelCardData

    dataset = cfg.train_data_dir or cfg.dataset_name
    rank = getattr(cfg, "rank", None)
    data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        tags=["diffusers", "difftrain", pipeline_class, "diffusers-training"]
        + {"DDPMPipeline": ["unconditional-image-generation"], "ClassConditionalPipeline": ["class-conditional"],
           "LatentDiffusionPipeline": ["latent-diffusion"]}.get(pipeline_class, ["text-to-image"])
        + (["lora"] if rank else []),
        datasets=[cfg.dataset_name] if cfg.dataset_name and "/" in cfg.dataset_name else None,
        base_model=cfg.pretrained_model_name_or_path or None,
    )
    picture = f"\n![samples]({grid})\n" if grid else ""
    loader, load = LOADERS.get(pipeline_class, LOADERS["StableDiffusionPipeline"])
    usage = (LORA_USAGE if rank else USAGE.get(pipeline_class, USAGE["DDPMPipeline"])).format(
        repo_id=repo_id, prompt=prompt or (getattr(cfg, "validation_prompts", None) or ["a photo"])[0],
        guidance=_guidance(cfg, pipeline_class), loader=loader, load=load.format(repo=repo_id),
        load_base=load.format(repo=cfg.pretrained_model_name_or_path))
    what = (f"Rank-{rank} LoRA adapters for **{cfg.pretrained_model_name_or_path}** (a `{pipeline_class}`)" if rank
            else f"A `{pipeline_class}`")
    content = f"""---
{data.to_yaml()}
---

# {repo_id}

{what} trained with difftrain on **{dataset}**
at {cfg.resolution}px for {global_step} optimizer steps (batch {cfg.train_batch_size} per device,
gradient accumulation {cfg.gradient_accumulation_steps}, learning rate {cfg.learning_rate},
prediction type `{prediction_type or cfg.prediction_type}`, EMA {'on' if uses_ema(cfg) else 'off'}).
{picture}
## How to use

```python
{usage}
```

The full training configuration is in `training_config.yaml`.
"""
    return ModelCard(content).content


USAGE = {
    "DDPMPipeline": 'from diffusers import DiffusionPipeline\n\npipeline = DiffusionPipeline.from_pretrained("{repo_id}")\n'
                    'images = pipeline(batch_size=4, num_inference_steps=50).images',
    # text-to-image: {loader} and {load} are LOADERS' lines for the pipeline class
    "StableDiffusionPipeline": '{loader}\n\n{load}\nimages = pipeline("{prompt}", guidance_scale={guidance}).images',
    "TextToImagePipeline": '{loader}\n\n{load}\nimages = pipeline("{prompt}", guidance_scale={guidance}).images',
    "ClassConditionalPipeline": '{loader}\n\n{load}\n'
                                'images = pipeline(class_labels=pipeline.class_names[:4], guidance_scale={guidance}).images',
    # a latent run's vae/ may be difftrain's MockAutoencoder, which has no plain-diffusers loader
    "LatentDiffusionPipeline": 'from difftrain.pipelines import LatentDiffusionPipeline\n\n'
                               'pipeline = LatentDiffusionPipeline.from_pretrained("{repo_id}")\n'
                               'images = pipeline(num_images=4).images  # class models: class_labels=[...]',
}
# difftrain's own pipelines load in plain diffusers: their folder carries their code (pipeline_code.py)
PLAIN_DIFFUSERS = ("from diffusers import DiffusionPipeline",
                   "# trust_remote_code: the pipeline's class is the code in the repo's pipeline.py\n"
                   f'pipeline = DiffusionPipeline.from_pretrained("{{repo}}", {LOAD_ARGS})')
LOADERS = {"StableDiffusionPipeline": ("from diffusers import StableDiffusionPipeline",
                                       'pipeline = StableDiffusionPipeline.from_pretrained("{repo}")'),
           "TextToImagePipeline": PLAIN_DIFFUSERS, "ClassConditionalPipeline": PLAIN_DIFFUSERS}
# a LoRA run's folder holds the adapters only: load its base, then the adapters on top
LORA_USAGE = ('{loader}\n\n{load_base}\n'
              'pipeline.load_lora_weights("{repo_id}")\n'
              'images = pipeline("{prompt}", guidance_scale={guidance}).images')


def _guidance(cfg, pipeline_class: str) -> float:
    """The guidance scale the run's grids used: the one to sample it at."""
    asked = getattr(cfg, "validation_guidance_scale", None)
    if pipeline_class in ("ClassConditionalPipeline", "LatentDiffusionPipeline"):
        return asked if asked is not None else CLASS_GUIDANCE
    return grid_guidance(asked, cfg.pretrained_model_name_or_path)


def push_folder(api, folder, *, repo_id: str, token: str | None, private: bool, card: str,
                commit_message: str):
    """Create the repo if needed, write README.md, and start the upload; returns a Future."""
    api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    (Path(folder) / "README.md").write_text(card)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS, run_as_future=True,
    )


def default_repo_id(cfg) -> str:
    return cfg.hub_model_id or Path(cfg.output_dir).resolve().name


def check_access(cfg) -> None:
    """Before training, not after: --push_to_hub needs the Hub reachable and a token that can write."""
    try:
        HfApi(token=cfg.hub_token).whoami()
    except Exception as e:  # offline, no token, bad token, network down
        raise UserError(f"--push_to_hub: the Hub cannot be used ({e.__class__.__name__}: {first_line(e)}); log in "
                        "(`hf auth login`) or pass --hub_token, or drop --push_to_hub and upload later.") from None


def push_pipeline(cfg, folder: Path, step: int, pipeline_class: str, prompt: str | None = None):
    """Card + upload of the pipeline folder (never checkpoints or logs); returns the upload's Future."""
    repo_id = default_repo_id(cfg)
    grids = sorted(Path(folder, "samples").glob("step-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    scheduler_config = Path(folder, "scheduler", "scheduler_config.json")
    prediction_type = json.loads(scheduler_config.read_text()).get("prediction_type") if scheduler_config.is_file() else None
    card = model_card(cfg, repo_id=repo_id, global_step=step, pipeline_class=pipeline_class, prompt=prompt,
                      grid=grids[-1].relative_to(folder).as_posix() if grids else None, prediction_type=prediction_type)
    return push_folder(HfApi(token=cfg.hub_token), folder, repo_id=repo_id, token=cfg.hub_token,
                       private=cfg.hub_private_repo, card=card, commit_message=f"difftrain: step {step}")
