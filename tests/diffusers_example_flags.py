"""Command-line flags of three Hugging Face diffusers example scripts, plus the
`accelerate launch` commands their READMEs show. Meant as test data.

SOURCES (read with the stored-code tools: find_files / read_file / find_string; no network)
-----------------------------------------------------------------------------------------
Main source, the newest version found. All five files come from ONE commit of a fork that
mirrors upstream:

    ChrisColeTech/diffusers @ 725959a41dab7fe82d92cac23db7f6e469cca971
      examples/unconditional_image_generation/train_unconditional.py   (32,023 chars, index id 67185066273)
      examples/text_to_image/train_text_to_image.py                     (50,081 chars, index id 67343272315)
      examples/text_to_image/train_text_to_image_lora.py                (44,270 chars, index id 67148871031)
      examples/unconditional_image_generation/README.md                 ( 6,338 chars, index id 67304903074)
      examples/text_to_image/README.md                                  (17,314 chars, index id 67265427940)
    The three scripts all call check_min_version("0.37.0.dev0") and carry the header
    "Copyright 2025 The HuggingFace Inc. team".

Why a fork: the index's copy of huggingface/diffusers returns only old versions of these paths,
and read_file needs the exact commit to reach any other version. These are the upstream
versions actually read:
    train_unconditional.py      @ 00769f612d6b6a537bf35c7becd2b00c67af4aa4 (2022, no check_min_version)
                                @ c2076599848a86fc5d215326fb441a956176e3ed (2022, argparse in __main__)
    train_text_to_image.py      @ 000280f56a6a81e355313e77ec831575ad571d8b (check_min_version 0.22.0.dev0)
                                @ 024c4376fb19caa85275c038f071b6e1446a5cad (check_min_version 0.13.0)
    train_text_to_image_lora.py @ 04a375b73b688ed85b0817f7c76fbf6f81e5eaa5 (check_min_version 0.15.0.dev0)
    text_to_image/README.md     @ 0356e18b09909d625e4cff5ac8e008719d9cb77c, @ c3776786174d2eab1eea8059f4fc85d1b39049f4 (pokemon era)
    unconditional/README.md     @ b4dc538f86969888285d323f9aa402b1840d1ae8, @ 0a8b25f45288fd7a081f7371c0789733ecb8d44a
Other forks hold newer copies of other files, with check_min_version("0.38.0.dev0"). So upstream
main has moved past 0.37.0.dev0. No 0.38 copy of these three scripts was found, and any changes
made after 725959a4 are unknown.

Reasons to trust the mirror:
  * Upstream PR huggingface/diffusers#12596 (merged, Nov 2025; found in the issues corpus) adds
    --preserve_input_precision and _ensure_three_channels to train_unconditional.py. The mirror has
    exactly that code, and a second, independent fork at 0.37.0.dev0 has it too.
  * The READMEs use "hf auth login" and huggingface.co/papers links (2025 upstream style).
  * --image_interpolation_mode (default "lanczos") matches upstream PR #11206 and issue #11390.
  * No foreign additions were seen anywhere in the files.

FORMAT
------
FLAGS[script][flag_without_dashes] = dict(type=..., default=..., choices=..., action=..., help=...), read from
diffusers_example_flags.yaml,
with `nargs` / `required` added only where the script sets them.
  * `type` is the Python builtin passed to argparse (str/int/float), or None for store_true flags.
  * `default` is the argparse default (store_true flags without an explicit default -> False).
  * `help` is a one-line summary of the help text (None where the script gives no help).
  * Flags are listed in the order of the scripts' parser.add_argument calls.
README_COMMANDS[script] = list of the argument strings that follow `accelerate launch [accelerate opts] SCRIPT`,
with line continuations removed and flags/values verbatim ($VARS kept as written).
README_COMMANDS_FULL gives the same commands complete: the `export` lines before them, plus the
accelerate options placed before the script name.
USAGE quotes the script-body lines that use the flags the brief names.
"""

from pathlib import Path

import yaml


FLAGS = {script: {name: {**spec, "type": {"str": str, "int": int, "float": float, None: None}[spec["type"]]}
                  for name, spec in flags.items()}
         for script, flags in yaml.safe_load((Path(__file__).parent / "diffusers_example_flags.yaml").read_text()).items()}


# Flags the brief asks about that a script does NOT define (argparse would reject them there):
ABSENT = {
    "train_unconditional": ["image_interpolation_mode", "num_validation_images", "validation_epochs",
                            "validation_prompt", "validation_prompts", "offload_ema", "foreach_ema",
                            "non_ema_revision", "dream_training", "dream_detail_preservation", "rank",
                            "scale_lr", "allow_tf32", "num_train_epochs", "report_to", "seed"],
    "train_text_to_image": ["preserve_input_precision", "num_validation_images", "validation_prompt",
                            "rank", "logger", "ddpm_num_inference_steps", "num_epochs"],
    "train_text_to_image_lora": ["preserve_input_precision", "validation_prompts", "use_ema", "offload_ema",
                                 "foreach_ema", "non_ema_revision", "dream_training", "dream_detail_preservation",
                                 "input_perturbation", "tracker_project_name", "logger",
                                 "ddpm_num_inference_steps", "num_epochs"],
}

# README commands: arguments after `accelerate launch [accelerate opts] SCRIPT`, continuations removed.
README_COMMANDS = {
    "train_unconditional": [
        # "Unconditional Flowers"
        '--dataset_name="huggan/flowers-102-categories" --resolution=64 --center_crop --random_flip '
        '--output_dir="ddpm-ema-flowers-64" --train_batch_size=16 --num_epochs=100 --gradient_accumulation_steps=1 '
        '--use_ema --learning_rate=1e-4 --lr_warmup_steps=500 --mixed_precision=no --push_to_hub',
        # "Unconditional Pokemon"
        '--dataset_name="huggan/pokemon" --resolution=64 --center_crop --random_flip '
        '--output_dir="ddpm-ema-pokemon-64" --train_batch_size=16 --num_epochs=100 --gradient_accumulation_steps=1 '
        '--use_ema --learning_rate=1e-4 --lr_warmup_steps=500 --mixed_precision=no --push_to_hub',
        # "Training with multiple GPUs" (accelerate opts before script: --mixed_precision="fp16" --multi_gpu)
        '--dataset_name="huggan/pokemon" --resolution=64 --center_crop --random_flip '
        '--output_dir="ddpm-ema-pokemon-64" --train_batch_size=16 --num_epochs=100 --gradient_accumulation_steps=1 '
        '--use_ema --learning_rate=1e-4 --lr_warmup_steps=500 --mixed_precision="fp16" --logger="wandb"',
        # "Provide the dataset as a folder" (placeholders verbatim)
        '--train_data_dir <path-to-train-directory> <other-arguments>',
    ],
    "train_text_to_image": [
        # Naruto example (accelerate opts: --mixed_precision="fp16"); env MODEL_NAME, DATASET_NAME
        '--pretrained_model_name_or_path=$MODEL_NAME --dataset_name=$DATASET_NAME --use_ema '
        '--resolution=512 --center_crop --random_flip --train_batch_size=1 --gradient_accumulation_steps=4 '
        '--gradient_checkpointing --max_train_steps=15000 --learning_rate=1e-05 --max_grad_norm=1 '
        '--lr_scheduler="constant" --lr_warmup_steps=0 --output_dir="sd-naruto-model"',
        # own training files (accelerate opts: --mixed_precision="fp16"); env MODEL_NAME, TRAIN_DIR
        '--pretrained_model_name_or_path=$MODEL_NAME --train_data_dir=$TRAIN_DIR --use_ema '
        '--resolution=512 --center_crop --random_flip --train_batch_size=1 --gradient_accumulation_steps=4 '
        '--gradient_checkpointing --max_train_steps=15000 --learning_rate=1e-05 --max_grad_norm=1 '
        '--lr_scheduler="constant" --lr_warmup_steps=0 --output_dir="sd-naruto-model"',
        # multiple GPUs (accelerate opts: --mixed_precision="fp16" --multi_gpu); env MODEL_NAME, DATASET_NAME
        '--pretrained_model_name_or_path=$MODEL_NAME --dataset_name=$DATASET_NAME --use_ema '
        '--resolution=512 --center_crop --random_flip --train_batch_size=1 --gradient_accumulation_steps=4 '
        '--gradient_checkpointing --max_train_steps=15000 --learning_rate=1e-05 --max_grad_norm=1 '
        '--lr_scheduler="constant" --lr_warmup_steps=0 --output_dir="sd-naruto-model"',
    ],
    "train_text_to_image_lora": [
        # accelerate opts: --mixed_precision="fp16"; env MODEL_NAME, DATASET_NAME
        '--pretrained_model_name_or_path=$MODEL_NAME --dataset_name=$DATASET_NAME --caption_column="text" '
        '--resolution=512 --random_flip --train_batch_size=1 --num_train_epochs=100 --checkpointing_steps=5000 '
        '--learning_rate=1e-04 --lr_scheduler="constant" --lr_warmup_steps=0 --seed=42 '
        '--output_dir="sd-naruto-model-lora" --validation_prompt="cute dragon creature" --report_to="wandb"',
    ],
}

# Same commands, complete: the export lines the README puts before each, and the accelerate options.
README_COMMANDS_FULL = {
    "train_unconditional": [
        "accelerate launch train_unconditional.py " + README_COMMANDS["train_unconditional"][0],
        "accelerate launch train_unconditional.py " + README_COMMANDS["train_unconditional"][1],
        'accelerate launch --mixed_precision="fp16" --multi_gpu train_unconditional.py '
        + README_COMMANDS["train_unconditional"][2],
        "accelerate launch train_unconditional.py " + README_COMMANDS["train_unconditional"][3],
    ],
    "train_text_to_image": [
        'export MODEL_NAME="CompVis/stable-diffusion-v1-4"; export DATASET_NAME="lambdalabs/naruto-blip-captions"; '
        'accelerate launch --mixed_precision="fp16"  train_text_to_image.py '
        + README_COMMANDS["train_text_to_image"][0],
        'export MODEL_NAME="CompVis/stable-diffusion-v1-4"; export TRAIN_DIR="path_to_your_dataset"; '
        'accelerate launch --mixed_precision="fp16" train_text_to_image.py '
        + README_COMMANDS["train_text_to_image"][1],
        'export MODEL_NAME="CompVis/stable-diffusion-v1-4"; export DATASET_NAME="lambdalabs/naruto-blip-captions"; '
        'accelerate launch --mixed_precision="fp16" --multi_gpu  train_text_to_image.py '
        + README_COMMANDS["train_text_to_image"][2],
    ],
    "train_text_to_image_lora": [
        'export MODEL_NAME="CompVis/stable-diffusion-v1-4"; export DATASET_NAME="lambdalabs/naruto-blip-captions"; '
        'accelerate launch --mixed_precision="fp16" train_text_to_image_lora.py '
        + README_COMMANDS["train_text_to_image_lora"][0],
    ],
}
# Note: the text_to_image README has no command that uses --dream_training, --offload_ema, --foreach_ema or
# --snr_gamma. It only describes them in prose ("Training with EMA weights", "Training with DREAM",
# "Training with Min-SNR weighting"). Its Flax commands run `python train_text_to_image_flax.py`, which is
# outside this brief. Older upstream README versions (the "pokemon" era; commits listed in the
# docstring) used DATASET_NAME/dataset_name="lambdalabs/pokemon-blip-captions" and the output dirs
# "sd-pokemon-model" / "sd-pokemon-model-lora", and their unconditional commands had no --center_crop,
# --random_flip or --use_ema.

# Quoted script-body lines (ChrisColeTech/diffusers @ 725959a4, = upstream 0.37.0.dev0) showing how values act.
# Both text-to-image scripts quote these the same
_SCALE_LR = [
    "if args.scale_lr:",
    "    args.learning_rate = (",
    "        args.learning_rate * args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes",
    "    )",
]
_ALLOW_TF32 = ["if args.allow_tf32:", "    torch.backends.cuda.matmul.allow_tf32 = True"]

USAGE = {
    "train_text_to_image": {
        "image_interpolation_mode": [
            "interpolation = getattr(transforms.InterpolationMode, args.image_interpolation_mode.upper(), None)",
            "if interpolation is None:",
            '    raise ValueError(f"Unsupported interpolation mode {args.image_interpolation_mode}.")',
            "transforms.Resize(args.resolution, interpolation=interpolation),  # Use dynamic interpolation method",
        ],
        "foreach_ema": [
            "ema_unet = EMAModel(ema_unet.parameters(), model_cls=UNet2DConditionModel, model_config=ema_unet.config, foreach=args.foreach_ema,)",
            'load_model = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DConditionModel, foreach=args.foreach_ema)',
        ],
        "offload_ema": [
            "# in load_model_hook and again right after accelerator.prepare(...):",
            "if args.offload_ema:",
            "    ema_unet.pin_memory()",
            "else:",
            "    ema_unet.to(accelerator.device)",
            "# in the training loop, under `if accelerator.sync_gradients:` and `if args.use_ema:`",
            "if args.offload_ema:",
            '    ema_unet.to(device="cuda", non_blocking=True)',
            "ema_unet.step(unet.parameters())",
            "if args.offload_ema:",
            '    ema_unet.to(device="cpu", non_blocking=True)',
        ],
        "dream_training": [
            "if args.dream_training:",
            "    noisy_latents, target = compute_dream_and_update_latents(",
            "        unet, noise_scheduler, timesteps, noise, noisy_latents, target, encoder_hidden_states,",
            "        args.dream_detail_preservation,",
            "    )",
            "# placed after the target (epsilon / v_prediction) is chosen, before model_pred = unet(...)",
        ],
        "non_ema_revision": [
            "# parse_args():",
            "if args.non_ema_revision is None:",
            "    args.non_ema_revision = args.revision",
            "# main():",
            "if args.non_ema_revision is not None:",
            '    deprecate("non_ema_revision!=None", "0.15.0", message=("Downloading \'non_ema\' weights from revision branches of the Hub is deprecated. Please make sure to use `--variant=non_ema` instead."))',
            'unet = UNet2DConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet", revision=args.non_ema_revision)',
            "# the EMA copy instead uses revision=args.revision, variant=args.variant",
        ],
        "scale_lr": _SCALE_LR,
        "allow_tf32": _ALLOW_TF32,
        "validation": [
            "if args.validation_prompts is not None and epoch % args.validation_epochs == 0:",
            "# log_validation: pipeline(args.validation_prompts[i], num_inference_steps=20, generator=generator)",
        ],
        "num_train_epochs": [
            "if args.max_train_steps is None:",
            "    args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch",
            "args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)",
        ],
        "tracker": ["accelerator.init_trackers(args.tracker_project_name, tracker_config)  # validation_prompts popped from config"],
    },
    "train_text_to_image_lora": {
        "image_interpolation_mode": [
            "interpolation = getattr(transforms.InterpolationMode, args.image_interpolation_mode.upper(), None)",
            "if interpolation is None:",
            '    raise ValueError(f"Unsupported interpolation mode {args.image_interpolation_mode}.")',
            "transforms.Resize(args.resolution, interpolation=interpolation),  # Use dynamic interpolation method",
        ],
        "rank": [
            'unet_lora_config = LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", '
            'target_modules=["to_k", "to_q", "to_v", "to_out.0"],)',
        ],
        "scale_lr": _SCALE_LR,
        "allow_tf32": _ALLOW_TF32,
        "validation": [
            "if args.validation_prompt is not None and epoch % args.validation_epochs == 0:",
            "# log_validation: for _ in range(args.num_validation_images): pipeline(args.validation_prompt, num_inference_steps=30, generator=generator)",
            "# a final validation (is_final_validation=True, phase 'test') runs after load_lora_weights(args.output_dir) if validation_prompt is set",
        ],
        "tracker": ['accelerator.init_trackers("text2image-fine-tune", config=vars(args))'],
    },
    "train_unconditional": {
        "preserve_input_precision": [
            "precision_augmentations = transforms.Compose([transforms.PILToTensor(), transforms.Lambda(_ensure_three_channels), "
            "transforms.ConvertImageDtype(torch.float32),] + spatial_augmentations + [transforms.Normalize([0.5], [0.5])])",
            "if not args.preserve_input_precision:",
            '    processed.append(augmentations(image.convert("RGB")))',
            "else:",
            '    if precise_image.mode == "P": precise_image = precise_image.convert("RGB")',
            "    processed.append(precision_augmentations(precise_image))",
        ],
        "interpolation": [
            "# no --image_interpolation_mode here; resize is fixed:",
            "transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),",
        ],
        "logger": [
            "accelerator = Accelerator(..., log_with=args.logger, project_config=accelerator_project_config, kwargs_handlers=[kwargs])",
            'tracker.add_images("test_samples", images_processed.transpose(0, 3, 1, 2), epoch)  # tensorboard',
            'accelerator.get_tracker("wandb").log({"test_samples": [wandb.Image(img) for img in images_processed], "epoch": epoch}, step=global_step)',
        ],
        "ddpm_num_inference_steps": [
            "images = pipeline(generator=generator, batch_size=args.eval_batch_size, "
            'num_inference_steps=args.ddpm_num_inference_steps, output_type="np",).images',
        ],
        "num_epochs": [
            "num_training_steps=(len(train_dataloader) * args.num_epochs),  # lr scheduler",
            "max_train_steps = args.num_epochs * num_update_steps_per_epoch",
            "if epoch % args.save_images_epochs == 0 or epoch == args.num_epochs - 1:",
        ],
        "use_ema": [
            "ema_model = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, "
            "inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=UNet2DModel, model_config=model.config,)",
        ],
        "lr_warmup": ["num_warmup_steps=args.lr_warmup_steps * args.gradient_accumulation_steps,"],
    },
}
