"""Loading trained adaptors the way users do, and comparing images with a fixed seed."""
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from engine.builtin import resolve_builtin


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def load_base(model: str, family: str):
    path = resolve_builtin(model) if model.startswith("builtin:") else model
    kw = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = pipeline_class(family).from_pretrained(path, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, prompt="a red square", seed=0, steps=4) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, height=64, width=64, generator=gen, output_type="np",
                guidance_scale=5.0).images[0]


def with_lora(model, family, lora_path) -> np.ndarray:
    pipe = load_base(model, family)
    pipe.load_lora_weights(str(lora_path))
    return image(pipe)


def with_manual_peft(model, family, diffusers_file: Path, rank: int, alpha: float) -> np.ndarray:
    """The trained weights put back with the LoraConfig training used: the scale training saw."""
    pipe = load_base(model, family)
    from peft.utils import set_peft_model_state_dict

    sd = load_file(str(diffusers_file))
    unet_sd = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    set_peft_model_state_dict(pipe.unet, unet_sd)
    for name in ("text_encoder", "text_encoder_2"):
        te_sd = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
        if te_sd:
            te = getattr(pipe, name)
            if not hasattr(te, "text_model"):  # transformers 5's flattened CLIPTextModel
                te_sd = {k.removeprefix("text_model."): v for k, v in te_sd.items()}
            te.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "out_proj"]))
            set_peft_model_state_dict(te, te_sd)
    return image(pipe)


def kohya_keys_and_meta(path: Path):
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata()
        alphas = {k: fh.get_tensor(k) for k in keys if k.endswith(".alpha")}
    return keys, meta, alphas
