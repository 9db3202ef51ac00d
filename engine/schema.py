"""Every training setting, declared once: name, type, default, group, help, range or choices, aliases.

engine.config reads, checks and writes configs from this list; the Training tab renders it as a form.
Names are the diffusers training-script flags (kohya's where diffusers has none); adding a setting is one
Field here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.sampling import samplers


@dataclass(frozen=True)
class Field:
    name: str
    type: type  # int, float, bool, str, or list (of str)
    default: Any
    group: str
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    optional: bool = False  # None ("unset") is allowed; TOML cannot spell None, so it is simply left out
    aliases: tuple = ()


def _f(name, type_, default, group, help, **kw) -> Field:
    return Field(name, type_, default, group, help, **kw)


FIELDS: list[Field] = [
    # --- model
    _f("pretrained_model_name_or_path", str, "builtin:tiny-sd", "model",
       "Base model: a built-in name (builtin:tiny-sd, builtin:tiny-sdxl), a hub id, a local diffusers "
       "folder or a single-file .safetensors checkpoint."),
    _f("pretrained_transformer_model_name_or_path", str, None, "model",
       "DiT families: the transformer from its own file, as a release ships it: a single .safetensors checkpoint "
       "(e.g. flux1-dev.safetensors in BFL names, or a fine-tune of it) or a diffusers transformer folder. The "
       "base model still gives the text encoders, the VAE and the transformer's config.", optional=True),
    _f("pretrained_vae_model_name_or_path", str, None, "model",
       "A separate VAE (hub id or folder), e.g. the fp16-fix VAE for SDXL.", optional=True),
    _f("revision", str, None, "model", "Hub revision of the base model.", optional=True),
    _f("variant", str, None, "model", "Weight variant of the base model, e.g. fp16.", optional=True),
    _f("model_family", str, "auto", "model", "Model family; auto detects it from the model.",
       choices=("auto", "sd1", "sd2", "sdxl", "sd3", "flux1", "zimage", "qwenimage")),
    _f("method", str, "lora", "model", "What to train: lora (an adaptor file) or full (every UNet weight, and "
       "the text encoder's with train_text_encoder; writes a whole diffusers pipeline), dreambooth (a subject "
       "from instance_prompt, LoRA unless dreambooth_full) or textual_inversion (new token embeddings).",
       choices=("lora", "full", "dreambooth", "textual_inversion")),
    _f("allow_pickle", bool, False, "model",
       "Allow loading pickle checkpoints (.ckpt/.bin/.pt). Pickle files can run code: only for files you trust."),
    # --- dataset
    _f("train_data_dir", str, None, "dataset", "Local folder of images and captions.", optional=True,
       aliases=("instance_data_dir",)),
    _f("dataset_name", str, None, "dataset",
       "A datasets hub id or a local dataset folder (save_to_disk or load_dataset layout).", optional=True),
    _f("image_column", str, "image", "dataset", "Image column of a dataset or metadata file."),
    _f("caption_column", str, "text", "dataset", "Caption column of a dataset or metadata file."),
    _f("caption_extension", str, ".txt", "dataset", "Extension of sidecar caption files (.txt, .caption or .tags)."),
    _f("trigger_word", str, "", "dataset", "Prepended to every caption as 'trigger, caption'."),
    _f("caption_dropout_rate", float, 0.0, "dataset",
       "Train this fraction of steps' captions as empty text, so classifier-free guidance has an unconditional "
       "model to steer from (needed when training from scratch; 0.05-0.1 is usual).", min=0.0, max=1.0),
    _f("shuffle_caption", bool, False, "dataset",
       "Shuffle the comma-separated tags of each caption every time it is used (kohya); the first keep_tokens "
       "tags and the trigger word stay in place."),
    _f("keep_tokens", int, 0, "dataset", "With shuffle_caption: how many leading tags stay in place (the trigger "
       "word counts as one).", min=0, max=100),
    _f("color_jitter_brightness", float, 0.0, "dataset", "Colour jitter: brightness factor drawn from "
       "[1-b, 1+b] per image (torchvision's ColorJitter; 0 = off).", min=0.0, max=1.0),
    _f("color_jitter_contrast", float, 0.0, "dataset", "Colour jitter: contrast factor from [1-c, 1+c].",
       min=0.0, max=1.0),
    _f("color_jitter_saturation", float, 0.0, "dataset", "Colour jitter: saturation factor from [1-s, 1+s].",
       min=0.0, max=1.0),
    _f("color_jitter_hue", float, 0.0, "dataset", "Colour jitter: hue shift from [-h, h] turns of the colour "
       "wheel.", min=0.0, max=0.5),
    _f("resolution", int, 512, "dataset", "Training resolution in pixels (square).",
       min=64, max=2048, multiple_of=8),
    _f("center_crop", bool, False, "dataset", "Center crop instead of random crop."),
    _f("random_flip", bool, False, "dataset", "Randomly flip images horizontally."),
    _f("image_interpolation_mode", str, "lanczos", "dataset", "Resize filter.",
       choices=("lanczos", "bilinear", "bicubic", "nearest")),
    _f("repeats", int, 1, "dataset", "How many times each image is seen per epoch.", min=1, max=1000),
    _f("max_train_samples", int, None, "dataset", "Use only the first N images (for quick tries).",
       optional=True, min=1),
    _f("enable_bucket", bool, False, "dataset",
       "Aspect-ratio bucketing: train each image at the bucket closest to its aspect ratio (about "
       "resolution x resolution pixels), so wide and tall images are neither cropped away nor padded."),
    _f("min_bucket_reso", int, 256, "dataset", "Smallest bucket side in pixels.", min=64, max=4096,
       multiple_of=8),
    _f("max_bucket_reso", int, 1024, "dataset", "Largest bucket side in pixels.", min=64, max=4096,
       multiple_of=8),
    _f("bucket_reso_steps", int, 64, "dataset", "Bucket sides are multiples of this (64 is safe for every "
       "model; 8 is the least).", min=8, max=256, multiple_of=8),
    _f("bucket_no_upscale", bool, False, "dataset",
       "Never enlarge an image to fill its bucket: small images get a smaller bucket of the same shape."),
    _f("cache_latents", bool, False, "dataset",
       "Encode images with the VAE once and reuse the latents (also across runs). Freezes the crop to the "
       "centre; flips stay random (both orientations are cached)."),
    # --- training
    _f("num_train_epochs", int, 1, "training", "Passes over the dataset.", min=1, max=1000),
    _f("max_train_steps", int, None, "training", "Total optimizer steps; overrides num_train_epochs.",
       optional=True, min=1),
    _f("train_batch_size", int, 1, "training", "Images per batch per process.", min=1, max=256),
    _f("gradient_accumulation_steps", int, 1, "training", "Batches per optimizer step.", min=1, max=32),
    _f("learning_rate", float, 1e-4, "training", "Learning rate.", min=0.0, max=1.0),
    _f("scale_lr", bool, False, "training",
       "Multiply the learning rate by batch size x accumulation x processes."),
    _f("lr_scheduler", str, "constant", "training", "Learning-rate schedule.",
       choices=("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")),
    _f("lr_warmup_steps", int, 50, "training", "Warm-up steps of the schedule.", min=0),
    _f("lr_num_cycles", int, 1, "training", "Cycles of cosine_with_restarts.", min=1),
    _f("lr_power", float, 1.0, "training", "Power of the polynomial schedule.", min=0.0),
    _f("optimizer", str, "adamw", "training", "Optimizer (adamw8bit needs CUDA and bitsandbytes).",
       choices=("adamw", "adamw8bit", "prodigy", "adafactor", "lion")),
    _f("adam_beta1", float, 0.9, "training", "Adam beta1.", min=0.0, max=1.0),
    _f("adam_beta2", float, 0.999, "training", "Adam beta2.", min=0.0, max=1.0),
    _f("adam_weight_decay", float, 0.01, "training", "Weight decay.", min=0.0, max=10.0),
    _f("adam_epsilon", float, 1e-8, "training", "Adam epsilon.", min=0.0, max=1.0),
    _f("prodigy_beta3", float, None, "training", "Prodigy beta3 (unset: the square root of adam_beta2).",
       optional=True, min=0.0, max=1.0),
    _f("prodigy_decouple", bool, True, "training", "Prodigy: AdamW-style decoupled weight decay."),
    _f("prodigy_use_bias_correction", bool, False, "training", "Prodigy: Adam's bias correction (true is "
       "usual for diffusion)."),
    _f("prodigy_safeguard_warmup", bool, False, "training", "Prodigy: guard the step-size estimate during "
       "warm-up (true when the schedule has warm-up)."),
    _f("prodigy_d_coef", float, 1.0, "training", "Prodigy: multiplier of the estimated step size.", min=0.0),
    _f("max_grad_norm", float, 1.0, "training", "Clip gradients to this norm (0 = no clipping).", min=0.0),
    _f("mixed_precision", str, "no", "training", "Weight and autocast precision.",
       choices=("no", "fp16", "bf16")),
    _f("gradient_checkpointing", bool, False, "training", "Trade compute for memory."),
    _f("allow_tf32", bool, False, "training", "Allow TF32 matmuls on Ampere+ GPUs."),
    # --- memory (the DiT families' transformer; engine/quantize.py, engine/block_swap.py)
    _f("quantize_base", str, "none", "training", "Flux.1 / SD3.5: hold the frozen transformer quantized and train the "
       "LoRA on top (QLoRA): nf4 (4-bit) or int8 with bitsandbytes, fp8 with torchao on GPUs that have fp8 "
       "(Ada, Hopper). Needs a CUDA GPU; the saved LoRA is the same either way.",
       choices=("none", "nf4", "int8", "fp8")),
    _f("blocks_to_swap", int, 0, "training", "Flux.1 / SD3.5: keep this many transformer blocks (the last ones) in CPU "
       "memory and copy each to the GPU for its forward and backward (sd-scripts' name; with "
       "gradient_checkpointing). Counted from the end of one list (Flux.1: 19 double then 38 single blocks), so "
       "sd-scripts' Flux N (N/2 double + N single) is about 2N here. Saves GPU memory, costs PCIe time. 0 = off.",
       min=0, max=200),
    _f("seed", int, None, "training", "Random seed (unset: one is drawn and recorded).", optional=True,
       min=0),
    _f("noise_offset", float, 0.0, "training", "Noise offset (0.05-0.1 helps very dark/bright images).",
       min=0.0, max=1.0),
    _f("clip_skip", int, 1, "training", "Use the text encoder's output this many layers from the end, as kohya and "
       "AUTOMATIC1111 count: 1 = the last layer, 2 = the one before (common for anime models). SD 1.x/2.x; "
       "SDXL always uses the one before the last.", min=1, max=12),
    _f("prediction_type", str, None, "training",
       "epsilon or v_prediction; unset uses the base model's scheduler.", optional=True,
       choices=("epsilon", "v_prediction")),
    _f("snr_gamma", float, None, "training", "Min-SNR loss weighting gamma (5.0 is usual; 0 = off, as in kohya).", optional=True,
       min=0.0, aliases=("min_snr_gamma",)),
    _f("loss_type", str, "l2", "training", "Loss: l2 (mean squared error), huber or smooth_l1 (robust to "
       "outliers; see huber_c).", choices=("l2", "huber", "smooth_l1")),
    _f("huber_c", float, 0.1, "training", "Huber / smooth L1 threshold c.", min=1e-6, max=10.0),
    _f("huber_schedule", str, "constant", "training", "How c varies with the timestep (kohya): constant, "
       "exponential (1 at t=0 down to huber_c at the last timestep) or snr.",
       choices=("constant", "exponential", "snr")),
    _f("do_edm_style_training", bool, False, "training",
       "EDM-style training (Karras et al. 2022) as in diffusers' SDXL DreamBooth script: Euler sigmas, "
       "preconditioned inputs and outputs, the clean latents as target. Not with snr_gamma."),
    # --- flow matching (the DiT families: Flux.1, SD3/SD3.5), under diffusers' script names
    _f("weighting_scheme", str, None, "training", "Flow matching: how timesteps are drawn (logit_normal, mode, "
       "or uniform: none, sigma_sqrt, cosmap; the last two also weight the loss). Unset: the family's default "
       "(SD3 logit_normal, Flux.1 none), as in diffusers' scripts.", optional=True,
       choices=("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")),
    _f("logit_mean", float, 0.0, "training", "Flow matching, logit_normal: mean of the normal.", min=-10.0, max=10.0),
    _f("logit_std", float, 1.0, "training", "Flow matching, logit_normal: standard deviation.", min=0.01, max=10.0),
    _f("mode_scale", float, 1.29, "training", "Flow matching, mode: the scale (SD3 paper).", min=-1.0, max=10.0),
    _f("flow_shift", float, None, "training", "Flow matching: shift of the timestep schedule (3.0 for SD3 and "
       "Flux.1; higher = more noise). Unset: the model's scheduler's.", optional=True, min=0.01, max=100.0,
       aliases=("discrete_flow_shift", "flow_schedule_shift")),
    _f("flow_dynamic_shift", bool, None, "training", "Flow matching: shift by image size (Flux.1 dev's "
       "resolution-dependent shift, as its pipeline samples). Unset: the model's scheduler decides.",
       optional=True, aliases=("flow_schedule_auto_shift",)),
    _f("flux_guidance_value", float, 1.0, "training", "Flux.1 dev: the guidance value its guidance embedding is "
       "trained at (1.0 as sd-scripts; diffusers' script uses 3.5).", min=0.0, max=30.0),
    _f("max_sequence_length", int, None, "training", "T5 tokens per caption (Flux.1 512, SD3 256 when unset; "
       "schnell takes at most 256).", optional=True, min=16, max=1024),
    _f("use_ema", bool, False, "training", "method = full: keep an exponential moving average of the UNet weights "
       "and save it as the result."),
    _f("ema_decay", float, 0.9999, "training", "EMA decay (warmed up as (1+step)/(10+step) until it reaches this).",
       min=0.0, max=1.0),
    _f("offload_ema", bool, False, "training", "Keep the EMA weights in CPU memory (saves GPU memory, slower).",
       aliases=("ema_on_cpu",)),
    _f("dataloader_num_workers", int, 0, "training", "Data loading worker processes.", min=0, max=64),
    _f("cache_text_encoder_outputs", bool, False, "training",
       "Encode each caption once with the frozen text encoder(s) and reuse it (also across runs). Not with "
       "train_text_encoder."),
    _f("attention", str, "sdpa", "training", "Attention of the UNet and VAE: sdpa (PyTorch's "
       "scaled_dot_product_attention, which picks flash or memory-efficient kernels on GPUs) or eager (plain "
       "matmul and softmax: slower, for comparison).", choices=("sdpa", "eager")),
    _f("fused_adamw", bool, True, "training", "optimizer = adamw: update every parameter in one fused kernel "
       "(CUDA and CPU; the same results within rounding)."),
    _f("channels_last", bool, False, "training", "Keep the UNet in channels_last memory format (faster convs on "
       "recent GPUs)."),
    _f("torch_compile", bool, False, "training", "Compile the UNet with torch.compile (slow first steps, faster "
       "after; needs a C++ compiler on CPU)."),
    _f("logging_steps", int, 1, "training", "Read the loss back from the device every N steps (fewer host "
       "syncs on GPUs; loss, progress and the NaN check happen at that pace).", min=1, max=10000),
    # --- lora
    _f("rank", int, 8, "lora", "LoRA rank (network_dim).", min=4, max=128, aliases=("lora_r", "lora_rank")),
    _f("lora_alpha", float, 16.0, "lora", "LoRA alpha (network_alpha); scale = alpha / rank.", min=0.0),
    _f("lora_target_modules", list, ["to_q", "to_k", "to_v", "to_out.0"], "lora",
       "UNet modules that get LoRA layers."),
    _f("train_text_encoder", bool, False, "lora", "Also train LoRA on the text encoder(s)."),
    _f("text_encoder_lr", float, None, "lora", "Text encoder learning rate (unset: learning_rate).",
       optional=True, min=0.0, max=1.0),
    _f("lora_type", str, "lora", "lora", "lora, loha (Hadamard product) or lokr (Kronecker product); LoHa and "
       "LoKr files use the LyCORIS layout ComfyUI and AUTOMATIC1111 load.", choices=("lora", "loha", "lokr")),
    _f("use_dora", bool, False, "lora", "DoRA: weight-decomposed LoRA (lora_type = lora only)."),
    _f("lora_dropout", float, 0.0, "lora", "Dropout on the LoRA layers' input (lora_type = lora).",
       min=0.0, max=1.0),
    _f("rank_dropout", float, 0.0, "lora", "LoHa/LoKr: dropout of whole ranks.", min=0.0, max=1.0),
    _f("module_dropout", float, 0.0, "lora", "LoHa/LoKr: chance to skip a module's adaptor in a step.",
       min=0.0, max=1.0),
    _f("conv_rank", int, None, "lora", "Also train the UNet's 3x3 conv layers (resnets, down/upsamplers) at this "
       "rank (kohya's conv_dim; unset: no conv layers).", optional=True, min=1, max=128, aliases=("conv_dim",)),
    _f("conv_alpha", float, None, "lora", "Alpha of the conv layers (unset: 1.0, kohya's default).",
       optional=True, min=0.0),
    # --- dreambooth (method = "dreambooth"; names as in diffusers' train_dreambooth*.py)
    _f("dreambooth_full", bool, False, "dreambooth",
       "Train the UNet itself (and the text encoder with train_text_encoder) instead of a LoRA; writes a whole "
       "diffusers pipeline."),
    _f("instance_prompt", str, None, "dreambooth",
       "Caption of every subject image, with a rare identifier, e.g. \"a photo of sks dog\" (caption files are "
       "ignored, as in diffusers' DreamBooth). The subject images are train_data_dir (alias instance_data_dir).",
       optional=True),
    _f("with_prior_preservation", bool, False, "dreambooth",
       "Also train on class images (class_prompt), so the class itself does not drift to the subject."),
    _f("class_prompt", str, None, "dreambooth", "Prompt of the class images, e.g. \"a photo of dog\".",
       optional=True),
    _f("class_data_dir", str, None, "dreambooth",
       "Folder of class images; missing ones (up to num_class_images) are generated there by the base model "
       "and reused by later runs.", optional=True),
    _f("prior_loss_weight", float, 1.0, "dreambooth", "Weight of the class images' (prior) loss.", min=0.0),
    _f("num_class_images", int, 100, "dreambooth", "Class images to train with (generated if fewer exist).",
       min=1, max=100000),
    _f("sample_batch_size", int, 4, "dreambooth", "Batch size when generating class images.", min=1, max=256),
    # --- textual_inversion (method = "textual_inversion"; names as in diffusers' textual_inversion.py)
    _f("placeholder_token", str, None, "textual_inversion",
       "The new token that learns the concept, e.g. \"<cat-toy>\"; use it in prompts.", optional=True),
    _f("initializer_token", str, None, "textual_inversion",
       "One existing word whose embedding starts the new token's, e.g. \"toy\".", optional=True),
    _f("num_vectors", int, 1, "textual_inversion", "Embedding vectors the placeholder token stands for.",
       min=1, max=75),
    _f("learnable_property", str, "object", "textual_inversion",
       "object (\"a photo of a {}\" templates) or style (\"a painting in the style of {}\").",
       choices=("object", "style")),
    # --- validation
    _f("validation_prompt", str, None, "validation",
       "Prompts for sample images, one per line, each with optional sd-scripts options: --n negative prompt, "
       "--w/--h size, --s steps, --d seed, --l guidance scale, --ss sampler (e.g. \"a red star --n blurry "
       "--s 28 --d 42\").", optional=True, aliases=("eval_prompt",)),
    _f("num_validation_images", int, 4, "validation", "Sample images per prompt.", min=0, max=64),
    _f("validation_epochs", int, 1, "validation", "Sample every N epochs.", min=1,
       aliases=("eval_steps", "sample_every_n_epochs")),
    _f("sample_every_n_steps", int, None, "validation", "Also sample every N steps (kohya).", optional=True,
       min=1),
    _f("sample_at_first", bool, False, "validation", "Sample once before training: the base model's baseline."),
    _f("validation_seed", int, 0, "validation", "Seed of the sample images (image i of a prompt: seed + i).",
       min=0),
    _f("num_inference_steps", int, 20, "validation", "Denoising steps of sample images.", min=1, max=200),
    _f("guidance_scale", float, 7.5, "validation", "Guidance scale of sample images.", min=0.0, max=50.0),
    _f("sample_sampler", str, "default", "validation",
       "Sampler of sample images, by the names ComfyUI, AUTOMATIC1111 and kohya use (euler, euler_a, dpmpp_2m, "
       "dpmpp_2m_karras, ddim, ...); default is DPM-Solver++ 2M on the base's noise schedule.",
       choices=samplers.NAMES),
    _f("validation_split", float, 0.0, "validation",
       "Hold out this fraction of the images (at least one) to compute a validation loss on (kohya).",
       min=0.0, max=0.5),
    _f("validation_data_dir", str, None, "validation",
       "A separate folder of held-out images and captions for the validation loss.", optional=True),
    _f("validation_loss_steps", int, None, "validation",
       "Compute the validation loss every N steps (unset: every epoch), at fixed timesteps with fixed noise, so "
       "values compare across steps and runs.", optional=True, min=1, aliases=("validate_every_n_steps",)),
    # --- output
    _f("adaptor_name", str, "my-lora", "output", "Name of the adaptor and of its run folder."),
    _f("output_dir", str, "runs", "output", "Folder that holds run folders."),
    _f("checkpointing_steps", int, None, "output", "Save a resumable checkpoint every N steps.",
       optional=True, min=1),
    _f("save_every_n_steps", int, None, "output", "Also write the adaptor (both formats) every N steps, under "
       "intermediate/ (kohya).", optional=True, min=1),
    _f("save_every_n_epochs", int, None, "output", "Also write the adaptor (both formats) every N epochs, under "
       "intermediate/ (kohya).", optional=True, min=1),
    _f("checkpoints_total_limit", int, None, "output", "Keep at most N checkpoints.", optional=True, min=1),
    _f("resume_from_checkpoint", str, None, "output", "A checkpoint folder, or 'latest'.", optional=True),
    _f("overwrite", bool, False, "output", "Replace an adaptor that already exists in the run folder."),
    _f("report_to", str, "tensorboard", "output", "Experiment tracker.",
       choices=("none", "tensorboard", "wandb")),
    # --- distributed: how many processes, GPUs and machines train (engine/launch.py turns these into
    # `accelerate launch` flags, spelt as accelerate spells them). Empty in presets: a config never hard-codes
    # a machine's GPU count; unset means one process on one machine.
    _f("num_processes", int, None, "distributed", "Training processes in total, over every machine (as accelerate "
       "counts them; one per GPU). Unset: one per machine, or one per GPU of gpu_ids. Each process trains "
       "train_batch_size images per step.", optional=True, min=1, max=4096),
    _f("gpu_ids", str, None, "distributed", "GPUs of this machine to train on, by id: \"0,1\" or \"all\" "
       "(accelerate's --gpu_ids). Unset: the first GPU.", optional=True),
    _f("num_machines", int, None, "distributed", "Machines (nodes) training together; more than one needs "
       "main_process_ip, and each machine its machine_rank (python -m engine.cluster writes both).",
       optional=True, min=1, max=1024),
    _f("machine_rank", int, None, "distributed", "This machine's rank, 0 on the main machine (the one at "
       "main_process_ip) to num_machines - 1.", optional=True, min=0, max=1023),
    _f("main_process_ip", str, None, "distributed", "Address of the machine of rank 0, reachable from every "
       "machine.", optional=True),
    _f("main_process_port", int, None, "distributed", "Port on the main machine the processes meet at (unset: "
       "29500, accelerate's).", optional=True, min=1, max=65535),
    _f("accelerate_config_file", str, None, "distributed", "An accelerate config file (.yaml or .json, from "
       "`accelerate config`) to launch with instead; the other launch settings here stay unset.",
       optional=True),
    # --- distributed: how several processes share the model inside the loop (engine/distributed.py)
    _f("distributed_strategy", str, "ddp", "distributed",
       "How several processes (accelerate launch --num_processes N) share the work: ddp (each holds the whole "
       "model; the default), fsdp (PyTorch FSDP2: weights, gradients and optimizer state sharded across them) or "
       "deepspeed (ZeRO stage 2 or 3; an optional extra: pip install -e '.[deepspeed]'). fsdp and deepspeed need "
       "method = \"full\"; the written model is the same whichever is used.", choices=("ddp", "fsdp", "deepspeed")),
    _f("fsdp_sharding", str, "full", "distributed",
       "fsdp: full (weights sharded, gathered for each block's forward and again for its backward: least "
       "memory), shard_grad_op (weights kept gathered from forward to backward: more memory, less traffic; "
       "ZeRO-2-like) or hybrid (HSDP: sharded within a machine, replicated across machines; with one machine, or "
       "one process per machine, the same as full).",
       choices=("full", "shard_grad_op", "hybrid")),
    _f("fsdp_cpu_offload", bool, False, "distributed",
       "fsdp: keep the sharded weights, gradients and optimizer state in CPU memory between uses (slower, "
       "much less GPU memory; CPU processes hold them there anyway)."),
    _f("fsdp_activation_checkpointing", bool, False, "distributed",
       "fsdp: recompute each wrapped block's activations in the backward pass (FSDP's own form of "
       "gradient_checkpointing; use one or the other)."),
    _f("deepspeed_stage", int, 2, "distributed",
       "deepspeed: ZeRO stage 2 (optimizer state and gradients sharded) or 3 (the weights too).", min=2, max=3),
    _f("deepspeed_offload", bool, False, "distributed",
       "deepspeed: optimizer state (and with stage 3 the weights) in CPU memory (ZeRO-Offload)."),
]


# ----------------------------------------------------------------------------- how the form shows a field
# The CLI ignores all of this; the Training tab reads it through the helpers below, so a new field gets a
# label from its name, sits under Advanced and always applies until it is listed here.

# The Basic view: what a first run needs (the rest is under Advanced). Method-specific ones show only when
# they apply (see APPLIES).
BASIC = ("method", "pretrained_model_name_or_path", "train_data_dir", "trigger_word", "instance_prompt",
         "placeholder_token", "initializer_token", "resolution", "num_train_epochs", "max_train_steps",
         "train_batch_size", "learning_rate", "rank", "lora_alpha", "mixed_precision", "validation_prompt",
         "adaptor_name")

# Text fields that take several lines (sd-scripts' prompt lines).
MULTILINE = ("validation_prompt",)

# Labels in words where the flag name read aloud would not do (others: see label()).
LABELS = {
    "pretrained_model_name_or_path": "Base model", "pretrained_vae_model_name_or_path": "Separate VAE",
    "revision": "Hub revision", "variant": "Weight variant", "method": "Training method",
    "allow_pickle": "Allow pickle checkpoints", "train_data_dir": "Dataset folder",
    "dataset_name": "Dataset (hub id or saved dataset)", "caption_dropout_rate": "Caption dropout",
    "keep_tokens": "Tags kept in place", "resolution": "Resolution (px)", "center_crop": "Centre crop",
    "image_interpolation_mode": "Resize filter", "repeats": "Repeats per epoch",
    "max_train_samples": "Use only the first N images", "enable_bucket": "Aspect-ratio buckets",
    "min_bucket_reso": "Smallest bucket side", "max_bucket_reso": "Largest bucket side",
    "bucket_reso_steps": "Bucket side step", "bucket_no_upscale": "Never upscale into a bucket",
    "num_train_epochs": "Epochs", "max_train_steps": "Steps (instead of epochs)",
    "train_batch_size": "Batch size", "gradient_accumulation_steps": "Gradient accumulation",
    "scale_lr": "Scale LR by batch", "lr_warmup_steps": "Warm-up steps", "lr_num_cycles": "LR restart cycles",
    "lr_power": "LR polynomial power", "adam_weight_decay": "Weight decay",
    "prodigy_d_coef": "Prodigy step multiplier", "max_grad_norm": "Gradient clipping norm",
    "mixed_precision": "Precision", "allow_tf32": "Allow TF32", "snr_gamma": "Min-SNR gamma",
    "huber_c": "Huber threshold", "do_edm_style_training": "EDM-style training", "use_ema": "Keep an EMA",
    "offload_ema": "EMA in CPU memory", "dataloader_num_workers": "Data loader workers",
    "cache_text_encoder_outputs": "Cache text encoder outputs", "fused_adamw": "Fused AdamW",
    "torch_compile": "torch.compile", "logging_steps": "Read the loss every N steps", "rank": "LoRA rank",
    "lora_alpha": "LoRA alpha", "lora_target_modules": "LoRA target modules", "text_encoder_lr":
    "Text encoder LR", "lora_type": "Adaptor type", "use_dora": "DoRA", "conv_rank": "Conv layer rank",
    "conv_alpha": "Conv layer alpha", "dreambooth_full": "Train the whole UNet",
    "with_prior_preservation": "Prior preservation", "class_data_dir": "Class images folder",
    "num_class_images": "Class images", "sample_batch_size": "Class image batch size",
    "num_vectors": "Vectors per token", "validation_prompt": "Sample prompts (one per line)",
    "sample_every_n_steps": "Sample every N steps", "sample_at_first": "Sample before training",
    "sample_sampler": "Sampler", "validation_data_dir": "Validation images folder",
    "validation_loss_steps": "Validation loss every N steps", "clip_skip": "CLIP skip",
    "save_every_n_steps": "Save the adaptor every N steps", "save_every_n_epochs": "Save the adaptor every N epochs",
    "num_validation_images": "Samples each time", "validation_epochs": "Sample every N epochs",
    "validation_seed": "Sample seed", "num_inference_steps": "Sample steps",
    "guidance_scale": "Sample guidance scale", "adaptor_name": "Output name", "output_dir": "Runs folder",
    "checkpointing_steps": "Checkpoint every N steps", "checkpoints_total_limit": "Checkpoints kept",
    "resume_from_checkpoint": "Resume from checkpoint", "overwrite": "Overwrite an existing adaptor",
    "report_to": "Experiment tracker", "num_processes": "Processes (GPUs) in total",
    "gpu_ids": "GPU ids", "num_machines": "Machines", "machine_rank": "This machine's rank",
    "main_process_ip": "Main machine's address", "main_process_port": "Main machine's port",
    "accelerate_config_file": "accelerate config file",
}
_WORDS = {"lr": "LR", "ema": "EMA", "snr": "SNR", "vae": "VAE", "adam": "Adam", "huber": "Huber",
          "lora": "LoRA", "reso": "resolution", "num": "number of"}

_ADAPTOR = ("lora", "dreambooth")  # the methods that train a LoRA-family adaptor
# When a field applies at all: {controlling field: values it must have}, every entry must hold. The form
# hides a field that does not apply (unless it holds a problem); the engine ignores its value.
APPLIES: dict[str, dict[str, tuple]] = {
    **{name: {"method": _ADAPTOR} for name in ("rank", "lora_alpha", "lora_target_modules", "lora_type",
                                               "conv_rank", "conv_alpha")},
    "use_dora": {"method": _ADAPTOR, "lora_type": ("lora",)},
    "lora_dropout": {"method": _ADAPTOR, "lora_type": ("lora",)},
    "rank_dropout": {"method": _ADAPTOR, "lora_type": ("loha", "lokr")},
    "module_dropout": {"method": _ADAPTOR, "lora_type": ("loha", "lokr")},
    "train_text_encoder": {"method": ("lora", "dreambooth", "full")},
    "text_encoder_lr": {"method": ("lora", "dreambooth", "full"), "train_text_encoder": (True,)},
    "trigger_word": {"method": ("lora", "full", "textual_inversion")},
    **{name: {"method": ("dreambooth",)} for name in ("dreambooth_full", "instance_prompt",
                                                      "with_prior_preservation")},
    **{name: {"method": ("dreambooth",), "with_prior_preservation": (True,)}
       for name in ("class_prompt", "class_data_dir", "prior_loss_weight", "num_class_images",
                    "sample_batch_size")},
    **{name: {"method": ("textual_inversion",)} for name in ("placeholder_token", "initializer_token",
                                                             "num_vectors", "learnable_property")},
    **{name: {"method": ("full",)} for name in ("use_ema", "ema_decay", "offload_ema")},
    **{name: {"distributed_strategy": ("fsdp",)} for name in ("fsdp_sharding", "fsdp_cpu_offload",
                                                             "fsdp_activation_checkpointing")},
    **{name: {"distributed_strategy": ("deepspeed",)} for name in ("deepspeed_stage", "deepspeed_offload")},
    "adam_beta1": {"optimizer": ("adamw", "adamw8bit", "prodigy", "lion")},
    "adam_beta2": {"optimizer": ("adamw", "adamw8bit", "prodigy", "lion")},
    "adam_epsilon": {"optimizer": ("adamw", "adamw8bit", "prodigy")},
    "fused_adamw": {"optimizer": ("adamw",)},
    **{name: {"optimizer": ("prodigy",)} for name in ("prodigy_beta3", "prodigy_decouple",
                                                      "prodigy_use_bias_correction", "prodigy_safeguard_warmup",
                                                      "prodigy_d_coef")},
    "lr_num_cycles": {"lr_scheduler": ("cosine_with_restarts",)},
    "lr_power": {"lr_scheduler": ("polynomial",)},
    "huber_c": {"loss_type": ("huber", "smooth_l1")},
    "huber_schedule": {"loss_type": ("huber", "smooth_l1")},
    "keep_tokens": {"shuffle_caption": (True,)},
    **{name: {"enable_bucket": (True,)} for name in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                                                     "bucket_no_upscale")},
}
# the fields whose value decides whether another applies: the form re-decides when one of these changes
CONTROLLERS = tuple(dict.fromkeys(k for rule in APPLIES.values() for k in rule))


def label(f: Field) -> str:
    """The field's name in words: LABELS, else its flag name read aloud ("lr_scheduler" -> "LR scheduler")."""
    if f.name in LABELS:
        return LABELS[f.name]
    words = [_WORDS.get(w, w) for w in f.name.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


FIELD_DEFAULTS = {f.name: f.default for f in FIELDS}


def applies(f: Field, values: dict[str, Any]) -> bool:
    """Whether f matters with these values (missing controllers count at their default)."""
    return all(values.get(k, FIELD_DEFAULTS[k]) in allowed for k, allowed in APPLIES.get(f.name, {}).items())
