"""The schemas of the commands that use a trained model: sample.py, evaluate.py and `evaluate.py train-classifier`
(the training schemas are in config.py; options.py parses both)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .options import opt


@dataclass
class SamplerOptions:
    """What sample.py and evaluate.py share: which weights, the sampler, guidance, seeds, device."""

    no_ema: bool = opt(False, "From a checkpoint-N/ folder, take the raw unet/ weights instead of unet_ema/.")
    scheduler: str | None = opt(
        None, "Sampler short name (see sample.py --list_schedulers; unset: euler_a, euler for EDM models)."
    )
    num_inference_steps: int | None = opt(None, "Sampling steps (unset: 100 for an unconditional model with "
                                         "guide_unet/ and a stochastic sampler, whose autoguidance gains from "
                                         "them; else 50).")
    eta: float = opt(0.0, "DDIM eta: 0 is deterministic, 1 adds DDPM-like noise (ddim only).")
    timestep_spacing: str | None = opt(
        None, "How the steps are spread over the training timesteps (unset: as the saved scheduler says).",
        choices=["leading", "trailing", "linspace"],
    )
    use_karras_sigmas: bool | None = opt(
        None, "true/false: Karras sigma spacing, for sigma-based schedulers (unset: as the name says)."
    )
    clip_sample: bool | None = opt(
        None, "true/false: static thresholding, clip the predicted x0 to [-1, 1] (unset: as trained)."
    )
    thresholding: bool | None = opt(None, "true/false: dynamic thresholding of the predicted x0 (unset: as trained).")
    seed: int = opt(0, "Image k is generated from seed + k alone.")
    negative_prompt: str | None = opt(None, "Text models: what classifier-free guidance steers away from (default: "
                                      "the empty prompt).")
    guidance_scale: float | None = opt(None, "Text and class models: classifier-free guidance scale; unconditional "
                                       "models with guide_unet/: autoguidance scale; 1 turns it off. Unset: the scale "
                                       "the model was trained for (its run's --validation_guidance_scale), else 7.5.")
    lora: str | None = opt(None, "A LoRA run's output_dir or checkpoint (or any diffusers LoRA folder) to apply to "
                           "--model, its base. A LoRA run's folder also works alone as --model.")
    lora_scale: float = opt(1.0, "Strength of the --lora adapters (0: the base alone).")
    device: str = opt("auto", "auto: CUDA, then MPS, then CPU.", choices=["auto", "cuda", "mps", "cpu"])
    dtype: str = opt("fp32", "Weights' dtype; the scheduler's arithmetic stays fp32.", choices=["fp32", "fp16", "bf16"])

    def validate(self) -> None:
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise UserError(f"--num_inference_steps must be at least 1 (got {self.num_inference_steps}).")
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"--eta must be between 0 and 1 (got {self.eta}).")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise UserError(f"--guidance_scale must be 0 or more (got {self.guidance_scale}).")


@dataclass
class SampleConfig(SamplerOptions):
    """Options of sample.py: images from a trained model with any diffusers scheduler."""

    model: str = opt("ddpm-mnist", "A pipeline folder written by a trainer, a checkpoint-N/ folder, or a Hub id.")
    scheduler: str | None = opt(
        None, "Sampler short name (see --list_schedulers), or 'all' for a comparison sheet (unset: euler_a; euler for "
        "EDM models)."
    )
    list_schedulers: bool = opt(False, "Print the scheduler names, one line each, and exit.")
    num_images: int = opt(64, "Images to generate (per scheduler with --scheduler all).")
    batch_size: int = opt(16, "Images per forward pass; does not change the images.")
    prompt: list[str] = opt(help="Text models: prompt(s); repeat the flag or list several. Image k gets prompt k mod P.",
                            factory=list)
    prompt_file: str | None = opt(None, "A text file of prompts, one a line (added after --prompt).")
    class_label: list[str] = opt(help="Class-conditional models: class name(s) or id(s), or all (every class in "
                                 "order); image k gets label k mod L. Unset: all, or for a pixel-cluster model (the "
                                 "default run's), clusters drawn by their training sizes.", factory=list)
    init_image: str | None = opt(None, "img2img: an image (or a folder: image k edits file k mod F) to noise to "
                                 "--strength and denoise from (SDEdit); resized and converted to the model's size and "
                                 "channels with a note.")
    strength: float | None = opt(None, "img2img: how much of --init_image is redrawn, 0 (returned as it is) to 1 "
                                 "(ignored). Unset: 0.6, or 1.0 with --mask_image.")
    mask_image: str | None = opt(None, "Inpainting: white marks what to repaint in --init_image; the rest is kept.")
    repaint_jumps: int = opt(0, "Inpainting: RePaint's resampling: every --repaint_jump_length steps, go back up that "
                             "many steps by forward diffusion and denoise them again, N times (diffusers' "
                             "jump_n_sample - 1; 0: off). Samplers: ddpm, ddim, euler, euler_a.")
    repaint_jump_length: int = opt(10, "Steps each --repaint_jumps jump goes back (diffusers' jump_length).")
    output_type: str = opt("png", "png: one PNG per image; npz: one uint8 NHWC array (for evaluation).",
                           choices=["png", "npz"])
    output_dir: str | None = opt(None, "Where to write (default: MODEL/samples/<scheduler>-<steps>/).")

    def validate(self) -> None:
        super().validate()
        for name in ("num_images", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)}).")
        if self.strength is not None and not 0.0 <= self.strength <= 1.0:
            raise UserError(f"--strength must be in [0, 1] (got {self.strength}).")
        if self.repaint_jumps < 0 or self.repaint_jump_length < 1:
            raise UserError(f"--repaint_jumps must be 0 or more and --repaint_jump_length at least 1 (got "
                            f"{self.repaint_jumps} and {self.repaint_jump_length}).")
        if self.repaint_jumps and not self.mask_image:
            raise UserError("--repaint_jumps resamples what --mask_image marks for repainting; pass --init_image and "
                            "--mask_image, or drop it.")


@dataclass
class EvaluateConfig(SamplerOptions):
    """Options of evaluate.py: FID, KID and prompt accuracy of a trained model (or of images made elsewhere)."""

    # --- what is scored ---
    model: str | None = opt("ddpm-mnist", "A pipeline folder, a checkpoint-N/ folder or a Hub id to generate from.")
    samples_dir: str | None = opt(None, "Score images made elsewhere instead: a folder of images, or a samples.npz "
                                  "(sample.py --output_type npz) or a folder holding one.")
    num_samples: int = opt(10000, "Images to generate (with --samples_dir: at most this many are read).")
    # --- reference ---
    dataset_name: str = opt("mnist", "Reference dataset: built-in name, save_to_disk folder or Hub id.",
                            aliases=["--dataset"])
    dataset_config_name: str | None = opt(None, "The Hub dataset's config name.")
    split: str = opt("test", "Reference split.")
    image_column: str | None = opt(None, "Column holding the images (default: the first image column).")
    cache_dir: str | None = opt(None, "Where 🤗 datasets caches; reference statistics are cached beside it.")
    resolution: int | None = opt(None, "Reference resolution (unset: the generated images' size).")
    num_ref_samples: int | None = opt(None, "Use only the first N reference images (unset: the whole split).")
    ref_stats: str | None = opt(None, "A reference statistics .npz to use, or to write when it does not exist.")
    kid_subset_size: int = opt(1000, "KID subset size (capped by the smaller set).")
    kid_subsets: int = opt(100, "Number of KID subsets.")
    batch_size: int = opt(64, "Images per generation batch.")
    feature_batch_size: int = opt(32, "Images per Inception forward pass.")
    # --- text-conditional models ---
    classifier: str | None = opt(None, "A classifier folder (evaluate.py train-classifier): also report the "
                                 "fraction of images read as the digit their prompt names.")
    prompt_template: list[str] = opt(help="Prompt template(s) with {digit}, {word} or {label}; image k shows class "
                                     "k mod 10.", factory=lambda: ["a handwritten digit {digit}"])
    # --- sweep ---
    sweep: bool = opt(False, "FID for each scheduler × steps (and --sweep_extra): sweep.csv and sweep.png.")
    sweep_schedulers: list[str] = opt(help="Schedulers of the sweep.",
                                      factory=lambda: ["ddim", "dpm++2m", "unipc", "euler"])
    sweep_steps: list[int] = opt(help="Step counts of the sweep.", factory=lambda: [5, 10, 20, 50])
    sweep_extra: list[str] = opt(help="More scheduler:steps runs of the sweep.", factory=lambda: ["ddpm:1000"])
    output_dir: str | None = opt(None, "Where metrics.json goes (default: MODEL/eval/<scheduler>-<steps>/, "
                                 "MODEL/eval/sweep/, or the --samples_dir folder).")

    def validate(self) -> None:
        super().validate()
        for name in ("num_samples", "batch_size", "feature_batch_size", "kid_subset_size", "kid_subsets"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)}).")
        for name in ("resolution", "num_ref_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 or left unset (got {getattr(self, name)}).")
        if self.num_samples < 2:
            raise UserError(f"--num_samples {self.num_samples}: FID and KID need at least 2 images.")
        if self.sweep and self.samples_dir:
            raise UserError("--sweep generates its own images; drop --samples_dir.")
        if self.sweep and not self.sweep_steps:
            raise UserError("--sweep_steps is empty; pass step counts, e.g. --sweep_steps 10 20.")


@dataclass
class ClassifierConfig:
    """Options of `evaluate.py train-classifier`: the small CNN that prompt accuracy reads digits with."""

    dataset_name: str = opt("mnist", "Built-in name, save_to_disk folder or Hub id with image and label columns.",
                            aliases=["--dataset"])
    label_column: str = opt("label", "Column holding the class index.")
    image_column: str | None = opt(None, "Column holding the images (default: the first image column).")
    train_split: str = opt("train", "Split to train on.")
    test_split: str = opt("test", "Split to measure the accuracy on.")
    cache_dir: str | None = opt(None, "Where 🤗 datasets caches.")
    max_train_samples: int | None = opt(None, "Train on the first N images only.")
    num_epochs: int = opt(4, "Epochs.")
    train_batch_size: int = opt(64, "Batch size.")
    learning_rate: float = opt(3e-3, "Peak learning rate (one-cycle schedule).")
    seed: int = opt(0, "Random seed.")
    output_dir: str = opt("classifier-mnist", "Folder for model.safetensors and config.json.")

    def validate(self) -> None:
        for name in ("num_epochs", "train_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)}).")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive (got {self.learning_rate}).")
