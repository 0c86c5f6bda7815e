"""Push a trained pipeline folder to the Hugging Face Hub, with a model card, in the background; push checkpoints
(--hub_push_checkpoints) and resume from them (--resume_from_checkpoint hub:USER/REPO[@checkpoint-N])."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationDelete, HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from . import checkpoints
from .classes import CLASS_GUIDANCE
from .config import HUB_CHECKPOINT, grid_guidance, uses_ema
from .unconditional_config import autoguidance_snapshot
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
           "LatentDiffusionPipeline": ["latent-diffusion"],
           "LDMPipeline": ["unconditional-image-generation", "latent-diffusion"]}.get(pipeline_class, ["text-to-image"])
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
    if pipeline_class in ("DDPMPipeline", "LDMPipeline") and hasattr(cfg, "autoguidance_snapshot") and \
            autoguidance_snapshot(cfg, clusters=0):  # a DDPMPipeline has no clusters
        usage += (f"\n# guide_unet/ is for autoguidance, which plain {pipeline_class} does not apply; difftrain samples "
                  f"with it:\n# python sample.py --model {repo_id}")
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
                                'images = pipeline(class_labels=pipeline.class_names[:4], guidance_scale={guidance}).images\n'
                                '# a pixel-cluster model (the default run): pipeline(num_images=4) draws its clusters by size',
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


# Checkpoints go to checkpoint-N/ on this branch of the model repo, not to main: diffusers' from_pretrained(repo)
# downloads every weights file of main that lies deeper than component/file (checkpoints' unet/ and unet_ema/ too), so
# main holds the pipeline alone. One branch, not one per checkpoint: rotation is one delete commit and one listing
# finds them all.
CHECKPOINT_BRANCH = "checkpoints"
# .checkpoint-upload-*/checkpoint-N: hard-linked copies of the checkpoints being uploaded, as local rotation may delete
# a checkpoint while its upload is still queued (IGNORE_PATTERNS' ".checkpoint-*" keeps them out of the pipeline's)
STAGING_PREFIX = ".checkpoint-upload-"
_ON_HUB = re.compile(rf"^(checkpoint-(\d+))/{re.escape(checkpoints.STATE_FILE)}$")


def hub_checkpoints(api, repo_id: str, token: str | None) -> list[str]:
    """The complete checkpoint-N folders on the repo's checkpoint branch, oldest first; [] without repo or branch."""
    try:
        files = api.list_repo_files(repo_id, revision=CHECKPOINT_BRANCH, token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return []
    found = sorted((int(m.group(2)), m.group(1)) for f in files if (m := _ON_HUB.match(f)))
    return [name for _, name in found]


class CheckpointUploads:
    """--hub_push_checkpoints: each checkpoint-N/ uploaded in the background, then the Hub's oldest beyond
    --checkpoints_total_limit deleted. One HfApi per run: its run_as_future jobs run one at a time, in order."""

    def __init__(self, cfg, output_dir):
        self.api, self.token = HfApi(token=cfg.hub_token), cfg.hub_token
        self.repo_id, self.private, self.keep = cfg.hub_model_id, cfg.hub_private_repo, cfg.checkpoints_total_limit
        self.output_dir = Path(output_dir)
        for stale in self.output_dir.glob(STAGING_PREFIX + "*"):  # a killed run's: older than any checkpoint kept
            shutil.rmtree(stale, ignore_errors=True)
        self.branch_ready = False

    def push(self, checkpoint: Path):
        """Queue checkpoint's upload; returns its Future at once (the hard links are made here, in no time)."""
        staged = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.output_dir)) / checkpoint.name
        shutil.copytree(checkpoint, staged, copy_function=_link_or_copy)
        return self.api.run_as_future(self._upload, staged)

    def _upload(self, staged: Path) -> None:
        """In the background: a failure is said in one line and training goes on; the next checkpoint is tried anew."""
        try:
            if not self.branch_ready:
                self.api.create_repo(self.repo_id, token=self.token, private=self.private, exist_ok=True)
                self.api.create_branch(self.repo_id, branch=CHECKPOINT_BRANCH, token=self.token, exist_ok=True)
                self.branch_ready = True
            self.api.upload_folder(repo_id=self.repo_id, folder_path=str(staged), path_in_repo=staged.name,
                                   revision=CHECKPOINT_BRANCH, token=self.token,
                                   commit_message=f"difftrain: {staged.name}")
            # rotation after the upload, so the Hub never holds fewer checkpoints than it kept
            beyond_limit = hub_checkpoints(self.api, self.repo_id, self.token)[: -self.keep] if self.keep else []
            if beyond_limit:
                self.api.create_commit(
                    self.repo_id, revision=CHECKPOINT_BRANCH, token=self.token,
                    operations=[CommitOperationDelete(f"{name}/", is_folder=True) for name in beyond_limit],
                    commit_message=f"difftrain: keep the newest {self.keep} checkpoints")
        except Exception as e:  # network, quota, permissions: the run's own checkpoints are still on disk
            self.branch_ready = False  # the next upload makes sure of repo and branch again
            print(f"warning: --hub_push_checkpoints: {staged.name} not uploaded ({e.__class__.__name__}: "
                  f"{first_line(e)}); training goes on and the next checkpoint is uploaded as usual.", file=sys.stderr)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: a copy, which takes the time of writing it
        shutil.copy2(src, dst)


def find_resume_checkpoint(cfg) -> Path | None:
    """--resume_from_checkpoint as a folder: a local one (checkpoints.find_resume_checkpoint), a
    hub:USER/REPO[@checkpoint-N] one downloaded, or with --hub_push_checkpoints, 'latest' from the Hub when the output
    folder has no checkpoint."""
    asked = cfg.resume_from_checkpoint
    if asked and (on_hub := HUB_CHECKPOINT.fullmatch(asked)):
        return download_checkpoint(cfg, on_hub["repo"], on_hub["name"], required=True)
    found = checkpoints.find_resume_checkpoint(cfg.output_dir, asked)
    if found is None and asked == "latest" and cfg.hub_push_checkpoints:
        return download_checkpoint(cfg, cfg.hub_model_id, None, required=False)
    return found


def download_checkpoint(cfg, repo_id: str, name: str | None, *, required: bool) -> Path | None:
    """checkpoint `name` (None: the newest) of repo_id's checkpoint branch, downloaded into the Hugging Face cache
    (the output folder is untouched until the run has checked it); None when there is none and none was required."""
    where = f"--resume_from_checkpoint {cfg.resume_from_checkpoint}"
    try:
        on_hub = hub_checkpoints(HfApi(token=cfg.hub_token), repo_id, cfg.hub_token)
    except Exception as e:
        raise _unreachable(where, e) from None
    name = name or (on_hub[-1] if on_hub else None)
    if name not in on_hub:
        if not required:
            return None
        fix = f"it has {', '.join(on_hub)}: name one of those" if on_hub else "a private one needs a token"
        raise UserError(f"{where}: {repo_id} has no {name or 'checkpoint'} on its '{CHECKPOINT_BRANCH}' branch; {fix}.")
    try:
        snapshot = snapshot_download(repo_id, revision=CHECKPOINT_BRANCH, allow_patterns=[f"{name}/*"],
                                     token=cfg.hub_token)
    except Exception as e:
        raise _unreachable(where, e) from None
    return Path(snapshot) / name


def _unreachable(where: str, e: Exception) -> UserError:
    # offline, network down, bad token
    return UserError(f"{where}: the Hub cannot be used ({e.__class__.__name__}: {first_line(e)}); log in (`hf auth "
                     "login`) or pass --hub_token, or resume from a local checkpoint.")
