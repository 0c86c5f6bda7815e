"""Every training option that all three training scripts share, and its one default (options.py parses them;
unconditional_config.py and text_config.py add each script's own; inference_config.py holds those of sample.py and
evaluate.py).
A YAML file (`--config`) sets many, flags beat the file.

Flag names are those of diffusers' example scripts, so a pasted command line keeps its meaning.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from .errors import UserError
from .data.images import INTERPOLATION_MODES
from .objectives import PREDICTION_TYPES
from .options import build_parser, dump, fields_of, from_dict, load_yaml, opt, parse, to_dict

# the engine's verbs, used as config.parse(TrainConfig, argv) etc.
__all__ = ["TrainConfig", "build_parser", "dump", "from_dict", "load_yaml", "parse", "to_dict", "HUB_CHECKPOINT",
           "check_ranges", "grid_guidance", "logging_steps", "uses_ema"]


# --resume_from_checkpoint hub:USER/REPO[@checkpoint-N] (hub.py downloads it)
HUB_CHECKPOINT = re.compile(r"hub:(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<name>checkpoint-\d+))?")


def _mnist_unet() -> dict:
    # Narrow at full resolution, where a CPU spends its time: 2.2x the images/s of [32, 64, 64], so more epochs in
    # the same minutes, which drew more legible digits (README Quality). sample_size and channels come from the data.
    return {
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],  # attention at 7x7 only
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 32,
    }


@dataclass
class TrainConfig:
    # --- output and run ---
    output_dir: str = opt("ddpm-mnist", "Folder for the pipeline, checkpoints, samples and logs.")
    overwrite_output_dir: bool = opt(False, "Allow training into an output_dir that holds another run.")
    seed: int | None = opt(None, "Random seed; when unset one is drawn and written to training_config.yaml.")
    # --- data ---
    dataset_name: str | None = opt(
        "mnist", "Built-in name (mnist, fashion_mnist), a save_to_disk folder, or a Hub dataset id."
    )
    dataset_config_name: str | None = opt(None, "The Hub dataset's config name.")
    train_data_dir: str | None = opt(None, "A folder of images (imagefolder layout); replaces --dataset_name.")
    split: str = opt("train", "Dataset split to train on.")
    image_column: str | None = opt(None, "Column holding the images (default: the first image column).")
    cache_dir: str | None = opt(None, "Where 🤗 datasets caches downloads and decoded images.")
    max_train_samples: int | None = opt(None, "Keep only the first N training examples.")
    resolution: int = opt(28, "Images are resized (shorter side) and cropped to this square size (28: MNIST's own).")
    center_crop: bool = opt(False, "Crop the centre; otherwise a random crop (same for square images).")
    random_flip: bool = opt(False, "Flip images horizontally at random (done on the batch).")
    image_mode: str = opt("auto", "auto keeps grayscale 1-channel; L or RGB force one.", choices=["auto", "L", "RGB"])
    image_interpolation_mode: str = opt("bilinear", "Filter that resizes images to --resolution (diffusers' names; PIL "
                                        "does the resizing).", choices=list(INTERPOLATION_MODES))
    preserve_input_precision: bool = opt(False, "Keep 16-bit images at 16 bits through decoding, resizing and the cache "
                                         "(else they are rescaled to 8 bits, as every 8-bit image is).")
    dataloader_num_workers: int = opt(0, "DataLoader worker processes.")
    # --- model and noise schedule ---
    model_config_name_or_path: str | None = opt(None, "A UNet config file or folder to build the UNet from.")
    pretrained_model_name_or_path: str | None = opt(None, "A pipeline folder (or Hub id) to continue training.")
    unet: dict = opt(help="UNet2DModel arguments (architecture), as a YAML/JSON mapping.", factory=_mnist_unet,
                     shown="see configs/mnist.yaml")
    ddpm_num_steps: int = opt(1000, "Number of diffusion training timesteps.")
    ddpm_beta_schedule: str = opt(
        "squaredcos_cap_v2", "Noise schedule (squaredcos_cap_v2: the cosine schedule).",
        choices=["linear", "scaled_linear", "squaredcos_cap_v2"],
    )
    prediction_type: str | None = opt(
        None, "What the UNet predicts (unset: v_prediction from scratch, or the pretrained model's).",
        choices=list(PREDICTION_TYPES),
    )
    snr_gamma: float | None = opt(None, "Min-SNR-gamma loss weighting (5.0 is the paper's choice).")
    noise_offset: float = opt(0.0, "Offset noise scale (e.g. 0.05): lets the model learn very dark/bright images.")
    input_perturbation: float = opt(0.0, "Input perturbation scale (0.1 in the paper); the target stays the noise.")
    objective: str = opt("ddpm", "ddpm: discrete timesteps (DDPMScheduler); edm: Karras et al. 2022 preconditioning.",
                         choices=["ddpm", "edm"])
    edm_p_mean: float = opt(-1.2, "EDM: mean of log sigma during training.")
    edm_p_std: float = opt(1.2, "EDM: standard deviation of log sigma during training.")
    sigma_data: float = opt(0.5, "EDM: standard deviation of the data (0.5 for images in [-1, 1]).")
    rescale_betas_zero_snr: bool = opt(
        False, "Zero terminal SNR (Lin et al. 2023); pair with v_prediction and trailing spacing at sampling."
    )
    # --- optimisation ---
    train_batch_size: int = opt(32, "Batch size per device.")
    num_epochs: int = opt(4, "Epochs to train, unless --max_train_steps is set.", aliases=["--num_train_epochs"])
    max_train_steps: int | None = opt(None, "Optimizer updates to train; overrides --num_epochs.")
    gradient_accumulation_steps: int = opt(1, "Batches per optimizer update.")
    learning_rate: float = opt(1e-3, "Peak learning rate.")
    scale_lr: bool = opt(False, "Multiply --learning_rate by train_batch_size × gradient_accumulation_steps × number of "
                         "processes (diffusers' --scale_lr); training_config.yaml keeps the unscaled value.")
    lr_scheduler: str = opt(
        "cosine",
        "diffusers.optimization.get_scheduler name.",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    lr_warmup_steps: int = opt(100, "Warm-up, in optimizer updates.")
    adam_beta1: float = opt(0.95, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    adam_weight_decay: float = opt(1e-6, "AdamW weight decay.")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.")
    use_8bit_adam: bool = opt(False, "bitsandbytes' 8-bit AdamW (needs bitsandbytes).")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.")
    mixed_precision: str | None = opt(
        None, "no, fp16 or bf16; unset: fp16/bf16 when `accelerate launch`/`accelerate config` chose one, else bf16 where "
        "the hardware computes it natively (CUDA GPUs with bf16, x86 CPUs with AVX512-BF16 or AMX), else no (fp32).",
        choices=["no", "fp16", "bf16"]
    )
    gradient_checkpointing: bool = opt(False, "Trade compute for memory in the UNet.")
    allow_tf32: bool = opt(False, "CUDA: TF32 matmuls and convolutions on Ampere or newer GPUs (faster; no effect on "
                           "other devices, which is said when it is given there).")
    compile: bool = opt(False, "torch.compile the UNet, through Accelerate (its TorchDynamoPlugin, when it prepares the "
                        "model): the inductor backend, unless `accelerate launch --dynamo_backend` chose another. The "
                        "first update compiles (the default UNet on 2 CPU cores: 100 s, 15 s once inductor's cache holds it); "
                        "its time is logged as compile_seconds and left out of images/s.")
    compile_mode: str | None = opt(None, "--compile's torch.compile mode (unset: default, or what `accelerate launch "
                                   "--dynamo_mode` chose); reduce-overhead adds CUDA graphs (CUDA only).",
                                   choices=["default", "reduce-overhead", "max-autotune"])
    channels_last: bool = opt(False, "Keep the UNet's convolution weights, and so every activation after the first "
                              "convolution, in channels_last memory format (diffusers recommends it on GPUs; on a CPU "
                              "it runs, slower). The same results up to float rounding; not with FSDP or ZeRO-3.")
    enable_xformers_memory_efficient_attention: bool = opt(False, "Use xformers attention (needs xformers).")
    use_ema: bool | None = opt(None, "Keep an exponential moving average of the weights (diffusers EMAModel) and ship "
                               "it; unset: on from scratch, off when fine-tuning (--pretrained_model_name_or_path).")
    ema_inv_gamma: float = opt(1.0, "EMA warm-up inverse multiplicative factor.")
    ema_power: float = opt(0.75, "EMA warm-up power.")
    ema_max_decay: float = opt(0.9999, "EMA maximum decay.")
    offload_ema: bool = opt(False, "Keep the EMA weights in CPU memory (pinned on CUDA), moved to the device for each "
                            "update: saves their size in GPU memory.")
    foreach_ema: bool = opt(False, "Update the EMA with torch's multi-tensor (foreach) ops: faster, a little more "
                            "memory.")
    dream_training: bool = opt(False, "DREAM (Zhou et al. 2024): one extra forward pass without gradient corrects "
                               "the training input by the model's own error; epsilon prediction only.")
    dream_detail_preservation: float = opt(1.0, "DREAM's exponent p of λ = √(1−ᾱ)^p.")
    # --- checkpoints, validation, logging ---
    checkpointing_steps: int = opt(500, "Save a resumable checkpoint-N/ every N optimizer updates.")
    checkpoints_total_limit: int | None = opt(None, "Keep at most this many checkpoints (oldest removed).")
    resume_from_checkpoint: str | None = opt(None, "latest, checkpoint-N, a checkpoint folder path, or "
                                             "hub:USER/REPO[@checkpoint-N] (--hub_push_checkpoints' uploads; without "
                                             "@, the newest); 'latest' with no checkpoint yet starts over, saying so.")
    checkpoint_on_interrupt: bool = opt(True, "On Ctrl-C or SIGTERM, stop at the next update boundary with a checkpoint "
                                        "of that step, so a preempted job loses nothing.")
    save_model_epochs: int = opt(1, "Write the pipeline to output_dir every N epochs (and at the end).")
    validation_steps: int | None = opt(500, "Write samples/step-N.png every N optimizer updates.")
    save_images_epochs: int | None = opt(None, "Also write a sample grid every N epochs.",
                                         aliases=["--validation_epochs"])
    validation_inference_steps: int = opt(
        50, "Sampling steps of the sample grids (euler_a; euler for EDM).", aliases=["--ddpm_num_inference_steps"]
    )
    eval_batch_size: int = opt(16, "Images in each sample grid.")
    eval_steps: int | None = opt(None, "Every N optimizer updates, log FID and KID of --eval_num_samples samples "
                                 "against the dataset's --eval_split (and prompt accuracy with --eval_classifier).")
    eval_num_samples: int = opt(1000, "Samples per --eval_steps evaluation (the grids' sampler, --validation_inference_steps).")
    eval_split: str = opt("test", "Reference split of the training dataset for --eval_steps.")
    report_to: str = opt("tensorboard", "Tracker.", choices=["tensorboard", "wandb", "none"], aliases=["--logger"])
    logging_dir: str = opt("logs", "Tracker folder, relative to output_dir.")
    logging_steps: int | None = opt(None, "Every N optimizer updates, log the loss (averaged over those updates), LR, "
                                    "gradient norm and images/s; the losses are read back from the device (and "
                                    "checked for NaN/inf) then and before every checkpoint, grid and save (unset: 1 on "
                                    "CPU, 10 on a GPU, where each read makes the CPU wait for the GPU).")
    tracker_project_name: str = opt("difftrain", "Project name for the tracker.")
    local_rank: int = opt(-1, "Ignored; set by launchers (kept so pasted command lines work).")
    # --- Hub ---
    push_to_hub: bool = opt(False, "Upload the final pipeline and a model card to the Hub.")
    hub_model_id: str | None = opt(None, "Hub repo id (default: the output_dir's name).")
    hub_token: str | None = opt(None, "Hub token (never printed or saved).", secret=True)
    hub_private_repo: bool = opt(False, "Create the Hub repo as private.")
    hub_push_checkpoints: bool = opt(False, "Also upload each checkpoint-N/ in the background, to the 'checkpoints' "
                                     "branch of --hub_model_id (--checkpoints_total_limit applies there too); "
                                     "'latest' then resumes from the Hub when the output folder has no checkpoint.")

    def validate(self) -> None:
        """Value checks that need more than a type: one line each, naming the flag."""
        for name in ("train_batch_size", "gradient_accumulation_steps", "resolution", "num_epochs",
                     "ddpm_num_steps", "checkpointing_steps", "save_model_epochs", "eval_batch_size",
                     "validation_inference_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)}).")
        for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit", "validation_steps",
                     "save_images_epochs", "logging_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1 or left unset (got {value}).")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"--learning_rate must be a positive number (got {self.learning_rate}).")
        check_ranges(self, {
            "adam_beta1": (0, 1, "in [0, 1)"), "adam_beta2": (0, 1, "in [0, 1)"), "adam_weight_decay": (0, None, ">= 0"),
            "adam_epsilon": (0, None, "> 0", True), "max_grad_norm": (0, None, "> 0", True),
            "lr_warmup_steps": (0, None, ">= 0"), "dataloader_num_workers": (0, None, ">= 0"),
            "seed": (0, 2**32, "in [0, 2**32)"), "snr_gamma": (0, None, "> 0 (5.0 is the paper's)", True),
            "noise_offset": (0, None, ">= 0"), "input_perturbation": (0, None, ">= 0"),
            "ema_max_decay": (0, 1, "in [0, 1]", False, True), "ema_power": (0, None, "> 0", True),
            "ema_inv_gamma": (0, None, "> 0", True), "sigma_data": (0, None, "> 0", True),
            "edm_p_std": (0, None, "> 0", True), "local_rank": (-1, None, ">= -1"),
        })
        if not self.output_dir.strip():
            raise UserError("--output_dir is empty; name a folder for the run.")
        if self.dream_detail_preservation <= 0:
            raise UserError(f"--dream_detail_preservation must be positive (got {self.dream_detail_preservation}).")
        if self.dream_detail_preservation != 1.0 and not self.dream_training:
            raise UserError("--dream_detail_preservation shapes DREAM, which --dream_training turns on; pass it or "
                            "drop --dream_detail_preservation.")
        if self.compile_mode is not None and not self.compile:
            raise UserError("--compile_mode sets how --compile compiles; pass --compile or drop --compile_mode.")
        if (self.offload_ema or self.foreach_ema) and self.use_ema is False:
            raise UserError(f"--{'offload_ema' if self.offload_ema else 'foreach_ema'} changes how the EMA is kept, "
                            "but --use_ema is false; drop one of them.")
        if self.objective == "edm":
            # EDM replaces the DDPM schedule and parameterisation; min-SNR, offset noise and input perturbation
            # combine with it (objectives.py)
            defaults = {name: _default(type(self), name) for name in
                        ("ddpm_num_steps", "ddpm_beta_schedule", "rescale_betas_zero_snr")}
            ddpm_only = [f"--{name}" for name, default in defaults.items() if getattr(self, name) != default]
            if self.dream_training:
                ddpm_only.append("--dream_training")
            if self.prediction_type not in (None, "epsilon"):  # diffusers' EDM schedulers call c_out·F "epsilon"
                ddpm_only.insert(0, "--prediction_type")
            if ddpm_only:
                raise UserError(f"--objective edm has its own noise levels and preconditioning; drop "
                                f"{', '.join(ddpm_only)} (they describe the DDPM objective).")
        if self.eval_steps is not None and self.eval_num_samples < 2:
            raise UserError(f"--eval_num_samples must be at least 2 for FID/KID (got {self.eval_num_samples}).")
        if self.eval_steps is not None and self.train_data_dir:
            raise UserError("--eval_steps compares against a dataset split; pass the data as --dataset_name (a "
                            "save_to_disk folder with a test split works) or drop --eval_steps.")
        if self.train_data_dir is None and self.dataset_name is None:
            raise UserError("No data: pass --dataset_name (e.g. mnist) or --train_data_dir FOLDER.")
        if self.hub_push_checkpoints and not (self.push_to_hub and "/" in (self.hub_model_id or "")):
            # the full id: a resumed job looks its checkpoints up there, before it knows whose token it holds
            raise UserError("--hub_push_checkpoints uploads to the --push_to_hub repo, named in full: pass "
                            "--push_to_hub --hub_model_id USER/REPO, or drop --hub_push_checkpoints.")
        resume = self.resume_from_checkpoint or ""
        if resume.startswith("hub:") and not HUB_CHECKPOINT.fullmatch(resume):
            raise UserError(f"--resume_from_checkpoint {resume}: write hub:USER/REPO (its newest checkpoint) or "
                            "hub:USER/REPO@checkpoint-N.")


def check_ranges(cfg, ranges: dict) -> None:
    """Each option in its range, or one line naming it: name → (low, high, what, low excluded, high included);
    an unset (None) option is not checked; NaN and infinities are never in range."""
    for name, (low, high, what, *edges) in ranges.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        low_open, high_closed = (list(edges) + [False, False])[:2]
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if ok and high is not None:
            ok = value <= high if high_closed else value < high
        if not ok:
            raise UserError(f"--{name} must be {what} (got {value}).")


def _default(cls, name: str):
    f = fields_of(cls)[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def grid_guidance(validation_guidance_scale: float | None, pretrained_model_name_or_path: str | None) -> float:
    """--validation_guidance_scale as resolved: what the user said, else 1.25 from scratch (the default MNIST text
    model's best: guidance 3 made 40 % of the digits asked for after one epoch) and 7.5 for a fine-tune."""
    if validation_guidance_scale is not None:
        return validation_guidance_scale
    return 7.5 if pretrained_model_name_or_path else 1.25


def logging_steps(cfg, device_type: str) -> int:
    """--logging_steps as resolved: what the user said, else 1 on CPU, where reading the loss costs nothing, and 10 on
    an accelerator, where each read is a host sync that lets the device run dry."""
    if cfg.logging_steps is not None:
        return cfg.logging_steps
    return 1 if device_type == "cpu" else 10


def uses_ema(cfg) -> bool:
    """--use_ema as resolved: what the user said, else on from scratch and off for a fine-tune (diffusers' default
    there, where an EMA copy of a large UNet costs its size again in memory)."""
    return cfg.use_ema if cfg.use_ema is not None else not cfg.pretrained_model_name_or_path
